"""serve/multipart.py against Werkzeug's multipart parser (what Flask's request.files uses): on any
well-formed body hypothesis builds, both find the same files and fields; on any bytes at all, ours
gives parts or MultipartError, nothing else."""

from __future__ import annotations

import io
import re
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from werkzeug.formparser import parse_form_data

from serve.multipart import MultipartError, boundary_of, parse_multipart

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

boundaries = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=?",
                     min_size=1, max_size=70).filter(lambda b: not b.endswith(" "))
names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'),
                min_size=1, max_size=20)
line_breaks = st.sampled_from([b"\r\n", b"\r\n", b"\n"])


@st.composite
def multipart_bodies(draw):
    """A body as browsers, curl and HTTP libraries write it, with the variations RFC 2046 allows."""
    boundary = draw(boundaries).encode()
    newline = draw(line_breaks)
    body = draw(st.sampled_from([b"", b"preamble text" + newline]))
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(["image", "top_k"]) | names)
        is_file = draw(st.booleans())
        filename = draw(st.sampled_from(["", "photo.png"]) | names) if is_file else None
        data = draw(st.binary(max_size=300) | st.sampled_from([b"--" + boundary + b"x", b"x\r\n--" + boundary + b"x"]))
        if not is_file:
            data = draw(st.text(max_size=40)).encode("utf-8")
        # Data that itself holds a delimiter (or ends in CR, which would join the line break before the next
        # one) is a different body than the one meant: no parser can tell.
        delimiter = re.compile(rb"[\r\n]--" + re.escape(boundary) + rb"(?:--|[ \t]*[\r\n])")
        if data.endswith(b"\r") or delimiter.search(newline + data + newline):
            data = b"plain data"
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        headers = b"Content-Disposition: " + disposition.encode("utf-8") + newline
        if is_file:
            headers += b"Content-Type: image/png" + newline
        padding = draw(st.sampled_from([b"", b" ", b"\t "]))
        body += b"--" + boundary + padding + newline + headers + newline + data + newline
        parts.append((name, filename, data))
    body += b"--" + boundary + b"--" + newline + draw(st.sampled_from([b"", b"epilogue"]))
    return boundary, body, parts


def werkzeug_view(boundary: bytes, body: bytes):
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": f'multipart/form-data; boundary="{boundary.decode()}"',
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    _, form, files = parse_form_data(environ, max_form_parts=None, max_form_memory_size=None)
    return ({k: [(f.filename, f.read()) for f in files.getlist(k)] for k in files},
            {k: form.getlist(k) for k in form})


@SETTINGS
@given(multipart_bodies())
def test_same_files_and_fields_as_werkzeug(case):
    boundary, body, parts = case
    note(repr(body))
    ours = parse_multipart(body, boundary)
    files, fields = werkzeug_view(boundary, body)
    assert {k: [(f.filename, f.data) for f in v] for k, v in ours.files.items()} == files
    assert ours.fields == fields
    expected_files = [(n, f, d) for n, f, d in parts if f is not None]
    assert sum(len(v) for v in ours.files.values()) == len(expected_files)
    for name, filename, data in expected_files:
        assert (filename, data) in [(f.filename, f.data) for f in ours.files[name]]


@SETTINGS
@given(st.binary(max_size=2000), boundaries)
def test_any_bytes_give_parts_or_a_multipart_error(body, boundary):
    try:
        form = parse_multipart(body, boundary.encode())
    except MultipartError:
        return
    assert all(isinstance(f.data, bytes) for files in form.files.values() for f in files)


@pytest.mark.parametrize("body,message", [
    (b"no boundary anywhere", "never appears"),
    (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nPNG...", "no closing boundary"),
    (b"--bXYZ", "never appears"),
    (b"--b\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\ndata\r\n--b--", "headers are longer"),
])
def test_malformed_bodies_say_what_is_wrong(body, message):
    with pytest.raises(MultipartError, match=message):
        parse_multipart(body, b"b")


@pytest.mark.parametrize("header", ["multipart/form-data", "multipart/form-data; boundary=",
                                    "multipart/form-data; boundary=é"])
def test_a_content_type_without_a_usable_boundary_is_refused(header):
    with pytest.raises(MultipartError):
        boundary_of(header)


class ScanCountingBytes(bytes):
    """bytes that record every search for the boundary: where it started and where it stopped."""

    def __new__(cls, data: bytes, needle: bytes):
        self = super().__new__(cls, data)
        self.needle, self.scans = needle, []
        return self

    def find(self, sub, start=None, end=None):
        found = super().find(sub, start, end)
        if sub == self.needle:
            self.scans.append((start or 0, found if found >= 0 else len(self)))
        return found


def test_a_photo_sized_upload_is_read_in_one_pass():
    """A 4 MB upload whose data is full of near-boundaries (lines starting with '--b'): every search for the
    boundary starts where the last one stopped, so the body is scanned once, and the data comes out whole."""
    data = (b"\r\n--bX" * 400_000)[:4_000_000]
    body = ScanCountingBytes(b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'
                             + data + b"\r\n--b--\r\n", b"--b")
    assert parse_multipart(body, b"b").files["image"][0].data == data
    assert len(body.scans) > 400_000, "each near-boundary was looked at"
    scanned = sum(stop - start for start, stop in body.scans)
    assert all(start >= previous_stop for (_, previous_stop), (start, _) in pairwise(body.scans)), \
        "no search went back over bytes already searched"
    assert scanned <= len(body), f"{scanned:,} bytes searched for a {len(body):,}-byte body"
