"""Properties, checked on inputs hypothesis generates (beyond the byte-level ones in test_contract_image.py):

1. decode_image on structured images: any real Fashion-MNIST picture, at any size, saved in any
   supported format and colour mode, with any EXIF orientation, gives the tensor of the plain PNG of
   the same picture (identical for lossless files, close for lossy ones).
2. decode_image on well-formed headers with random fields (PNG IHDR, GIF screen, BMP, TIFF, JPEG SOF):
   a tensor or the project's ImageError, nothing else; and a header claiming more pixels than the
   limit is refused as ImageTooLarge before anything is decoded.
3. The request parsers (base64, top_k) on any JSON value: a value or the ApiError with status 400.
4. The service (Flask test client) on generated requests — any method, path, content type, body,
   JSON document, file name, top_k, model name: never a 5xx, always a JSON error of the documented
   shape with one of the documented statuses.

    .venv/bin/python -m pytest -q tests/test_reliability_properties.py -s
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from itertools import pairwise
from urllib.parse import quote

import numpy as np
import pytest
from helpers import encode, error_of, png_bytes
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st
from PIL import Image

from contract import ImageError, ImageTooLarge, decode_image

# Pillow warns (and decode_image then refuses with ImageTooLarge) for headers above its own bomb threshold.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

FEW = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# format -> (Pillow save options, lossless?) and the modes each format can hold
FORMATS = {
    "PNG": ({}, True), "BMP": ({}, True), "TIFF": ({}, True), "GIF": ({}, True),
    "WEBP-lossless": ({"lossless": True}, True), "WEBP": ({"quality": 92}, False),
    "JPEG": ({"quality": 95}, False),
}
MODES = {
    "PNG": ["L", "LA", "RGB", "RGBA", "P", "P-transparent", "I;16"],
    "BMP": ["L", "RGB", "RGBA", "P"],
    "TIFF": ["L", "LA", "RGB", "RGBA", "P", "I;16", "I", "F", "CMYK"],
    "GIF": ["L", "P", "P-transparent"],
    "WEBP-lossless": ["L", "LA", "RGB", "RGBA"],
    "WEBP": ["L", "RGB", "RGBA"],
    "JPEG": ["L", "RGB", "CMYK", "YCbCr"],
}


def in_mode(grey: np.ndarray, mode: str) -> Image.Image:
    """The greyscale picture in `mode`, every pixel's brightness unchanged (alpha fully opaque)."""
    picture = Image.fromarray(grey, "L")
    if mode in ("P", "P-transparent"):
        palette = Image.frombytes("P", picture.size, grey.tobytes())
        palette.putpalette([v for i in range(256) for v in (i, i, i)])
        if mode == "P-transparent":
            unused = np.setdiff1d(np.arange(256), grey)
            assume(len(unused) > 0)
            palette.info["transparency"] = int(unused[0])  # transparent, but used by no pixel
        return palette
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(grey.astype(np.int32) * 257)
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32) / 255.0)
    return picture.convert(mode)


_ORIENT_STORED = {  # how a camera stores an upright picture for each EXIF orientation
    1: lambda p: p, 2: lambda p: p.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    3: lambda p: p.transpose(Image.Transpose.ROTATE_180), 4: lambda p: p.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    5: lambda p: p.transpose(Image.Transpose.TRANSPOSE), 6: lambda p: p.transpose(Image.Transpose.ROTATE_90),
    7: lambda p: p.transpose(Image.Transpose.TRANSVERSE), 8: lambda p: p.transpose(Image.Transpose.ROTATE_270),
}


@st.composite
def real_picture_files(draw, images):
    """(file bytes, the upright greyscale picture it holds, lossless?, description)."""
    image = images[draw(st.integers(0, len(images) - 1))].squeeze(-1)
    scale_x, scale_y = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    grey = np.asarray(Image.fromarray(image).resize((28 * scale_x, 28 * scale_y), Image.Resampling.NEAREST))
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(MODES[fmt]))
    options, lossless = FORMATS[fmt]
    orientation = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8])) if fmt in ("PNG", "JPEG", "WEBP-lossless") else 1
    stored = _ORIENT_STORED[orientation](in_mode(grey, mode))
    extra = dict(options)
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif
    if mode == "P-transparent":
        extra["transparency"] = stored.info["transparency"]
    data = encode(stored, fmt.split("-")[0], **extra)
    description = f"{fmt} {mode} {grey.shape[1]}x{grey.shape[0]} orientation {orientation}"
    return data, grey, lossless, description


@MANY
@given(data=st.data(), channels=st.sampled_from([1, 3]))
def test_any_format_mode_size_and_orientation_gives_the_png_tensor(fashion_mnist_test, data, channels):
    sample, grey, lossless, description = data.draw(real_picture_files(fashion_mnist_test[0][:200]))
    note(description)
    event(description.split(" ")[0])
    out = decode_image(sample, 28, 28, channels)
    reference = decode_image(png_bytes(grey[..., None]), 28, 28, channels)
    assert out.shape == (28, 28, channels) and out.dtype == np.uint8
    difference = np.abs(out.astype(int) - reference.astype(int))
    if lossless:
        assert difference.max() == 0, description
    else:
        assert difference.mean() < 6, description


# --- well-formed headers with random fields ------------------------------------------------------------

LIMIT = 1_000_000  # a small pixel limit, so generated headers fall on both sides of it


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


# (colour type, allowed bit depths) as the PNG specification lists them
_PNG_TYPES = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


@st.composite
def png_headers(draw):
    color_type = draw(st.sampled_from(sorted(_PNG_TYPES)))
    depth = draw(st.sampled_from(_PNG_TYPES[color_type]))
    width = draw(st.one_of(st.integers(1, 64), st.integers(1, 5000), st.integers(1, 2**31 - 1)))
    height = draw(st.one_of(st.integers(1, 64), st.integers(1, 5000), st.integers(1, 2**31 - 1)))
    interlace = draw(st.sampled_from([0, 1]))
    payload = draw(st.binary(max_size=2000))
    chunks = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, interlace))
    if color_type == 3:
        entries = draw(st.integers(1, 256))
        chunks += _png_chunk(b"PLTE", draw(st.binary(min_size=3 * entries, max_size=3 * entries)))
    chunks += _png_chunk(b"IDAT", zlib.compress(payload) if draw(st.booleans()) else payload)
    return b"\x89PNG\r\n\x1a\n" + chunks + _png_chunk(b"IEND", b""), width * height


@st.composite
def gif_headers(draw):
    width, height = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    flags = draw(st.integers(0, 255))
    table = (draw(st.binary(min_size=3 * 2 ** ((flags & 7) + 1), max_size=3 * 2 ** ((flags & 7) + 1)))
             if flags & 0x80 else b"")
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02" + draw(st.binary(max_size=300)) + b"\x00"
    return b"GIF89a" + struct.pack("<HHBBB", width, height, flags, 0, 0) + table + frame + b"\x3b", width * height


@st.composite
def bmp_headers(draw):
    width = draw(st.integers(-70000, 70000))
    height = draw(st.integers(-70000, 70000))
    bits = draw(st.sampled_from([1, 4, 8, 16, 24, 32, 0, 7]))
    compression = draw(st.sampled_from([0, 1, 2, 3, 9]))
    pixels = draw(st.binary(max_size=3000))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(pixels), 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels, abs(width) * abs(height)


@st.composite
def tiff_headers(draw):
    width, height = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
    bits = draw(st.sampled_from([1, 8, 16, 32]))
    samples = draw(st.sampled_from([1, 3, 4]))
    photometric = draw(st.sampled_from([0, 1, 2, 3, 5]))
    compression = draw(st.sampled_from([1, 5, 7, 8, 32773]))
    pixels = draw(st.binary(max_size=2000))
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, compression),
               (262, 3, 1, photometric), (273, 4, 1, 8), (277, 3, 1, samples), (278, 4, 1, height),
               (279, 4, 1, len(pixels))]
    ifd_offset = 8 + len(pixels)
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, count)
        + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, count, value in entries) + b"\x00\x00\x00\x00"
    return b"II*\x00" + struct.pack("<I", ifd_offset) + pixels + ifd, width * height


@st.composite
def jpeg_headers(draw):
    """A real JPEG of a real picture whose SOF frame header is rewritten with random dimensions."""
    width, height = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    data = bytearray(_JPEG_SEED)
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data), width * height


_JPEG_SEED = encode(Image.new("L", (56, 56), 128), "JPEG", quality=90)


def _decode_or_image_error(data: bytes, claimed_pixels: int, strict_claim: bool) -> None:
    try:
        out = decode_image(data, 28, 28, 1, max_pixels=LIMIT)
    except ImageTooLarge:
        event("ImageTooLarge")
        return
    except ImageError as err:
        event("ImageError")
        assert str(err)
        if strict_claim:
            assert claimed_pixels <= LIMIT, f"a {claimed_pixels:,}-pixel header must be refused as too large: {err}"
        return
    event("tensor")
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8
    assert claimed_pixels <= LIMIT, "more pixels than the limit were decoded"


@MANY
@given(png_headers())
def test_png_headers_claiming_too_many_pixels_are_refused_as_too_large(header):
    data, claimed = header
    _decode_or_image_error(data, claimed, strict_claim=True)


@MANY
@given(st.one_of(gif_headers(), bmp_headers(), tiff_headers(), jpeg_headers()))
def test_gif_bmp_tiff_and_jpeg_headers_give_a_tensor_or_image_error(header):
    data, claimed = header
    _decode_or_image_error(data, claimed, strict_claim=False)


@MANY
@given(st.sampled_from(["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"]), st.integers(1, 200), st.integers(1, 200),
       st.integers(0, 10**6), st.binary(min_size=1, max_size=64))
def test_real_files_cut_or_spliced_anywhere_give_a_tensor_or_image_error(fmt, width, height, position, insert):
    """A real file of any size, cut at any point or with random bytes spliced in."""
    whole = encode(Image.effect_noise((width, height), 60).convert("L"), fmt)
    position %= len(whole)
    for data in (whole[:position], whole[:position] + insert + whole[position:],
                 whole[:position] + insert + whole[position + len(insert):]):
        if data:
            _decode_or_image_error(data, width * height, strict_claim=False)


# --- the request parsers ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@MANY
@given(json_values)
def test_top_k_parser_gives_a_count_or_a_400(value):
    from serve.inputs import ApiError, parse_top_k

    try:
        parsed = parse_top_k(value, 10)
    except ApiError as err:
        assert err.status == 400 and err.code == "invalid_top_k"
        return
    assert parsed is None or (isinstance(parsed, int) and 1 <= parsed <= 10)


@MANY
@given(st.one_of(json_values, st.text(alphabet="ABCabc012+/=-_ \n\t.,:;%@", max_size=60),
                 st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode())))
def test_base64_parser_gives_bytes_or_a_400(value):
    from serve.inputs import ApiError, decode_base64

    try:
        data = decode_base64(value, "image")
    except ApiError as err:
        assert err.status == 400 and err.code == "invalid_base64"
        return
    assert isinstance(data, bytes)
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9+/=]*", value):
        # Standard base64 as sent (the C fast path takes it when well-formed): the bytes base64 itself decodes
        assert data == base64.b64decode(value + "=" * (-len(value) % 4), validate=True)


@MANY
@given(st.lists(st.floats(min_value=0, max_value=1, width=32), min_size=2, max_size=60), st.data())
def test_percentages_are_ranked_two_decimal_shares_that_sum_to_exactly_100(values, data):
    """What /predict answers from any output vector: every class once, most likely first, each share
    within a rounding step of the truth, two decimals, and a sum of exactly 100.00."""
    from serve.predict import rank

    probabilities = np.asarray(values, dtype=np.float32)
    top_k = data.draw(st.one_of(st.none(), st.integers(1, len(values))), label="top_k")
    labels = [f"class {i}" for i in range(len(values))]
    ranked = rank(probabilities, labels, top_k)
    full = rank(probabilities, labels, None)
    assert len(ranked) == (top_k or len(values)) and ranked == full[: len(ranked)]
    assert sorted(p["index"] for p in full) == list(range(len(values)))
    assert all(p["label"] == labels[p["index"]] for p in full)
    hundredths = [round(p["percent"] * 100) for p in full]
    assert all(abs(p["percent"] * 100 - h) < 1e-6 for p, h in zip(full, hundredths, strict=True)), "two decimals"
    assert sum(hundredths) == 10000
    total = float(probabilities.astype(np.float64).sum())
    truth = probabilities.astype(np.float64) / total * 100 if total > 0 else np.full(len(values), 100 / len(values))
    assert all(abs(p["percent"] - truth[p["index"]]) <= 0.01 + 1e-9 for p in full)
    assert all(truth[a["index"]] >= truth[b["index"]] for a, b in pairwise(full)), "most likely first"


# --- the service on generated requests -------------------------------------------------------------------

ROUTES = ["/predict", "/v1/models/fashion_mnist:predict", "/v1/models/fashion_mnist/versions/1:predict",
          "/v1/models/fashion_mnist", "/v1/models/fashion_mnist/metadata", "/healthz", "/readyz", "/model",
          "/openapi.json", "/metrics", "/"]
CONTENT_TYPES = ["image/png", "image/jpeg", "application/octet-stream", "application/json", "text/plain",
                 "multipart/form-data; boundary=hypothesis", "application/x-www-form-urlencoded", "", "image/",
                 "application/json; charset=latin-1", "multipart/form-data"]
DOCUMENTED = {200, 400, 404, 405, 413, 415}


@st.composite
def bodies(draw, real_png: bytes):
    kind = draw(st.sampled_from(["bytes", "png", "mutated png", "json", "image json", "tf json", "multipart"]))
    if kind == "bytes":
        return draw(st.binary(max_size=3000))
    if kind == "png":
        return real_png
    if kind == "mutated png":
        data = bytearray(real_png)
        for position, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)),
                                             max_size=6)):
            data[position] = value
        return bytes(data[: draw(st.integers(1, len(data)))])
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "image json":
        image = draw(st.sampled_from([base64.b64encode(real_png).decode(), ""]) | st.text(max_size=30) | json_values)
        document = {draw(st.sampled_from(["image", "images", "top_k", "instances"])): image}
        if draw(st.booleans()):
            document["top_k"] = draw(json_values)
        return json.dumps(document).encode()
    if kind == "tf json":
        instance = draw(st.sampled_from([{"b64": base64.b64encode(real_png).decode()}, {"b64": "!!"}])
                        | json_values | st.lists(st.lists(st.integers(-5, 300), min_size=28, max_size=28),
                                                 min_size=28, max_size=28))
        return json.dumps({draw(st.sampled_from(["instances", "inputs"])):
                           draw(st.lists(st.just(instance), max_size=3))}).encode()
    filename = draw(st.text(max_size=300).map(lambda t: t.replace('"', "").replace("\r", "").replace("\n", "")))
    field = draw(st.sampled_from(["image", "image", "photo"]))
    content = draw(st.sampled_from([real_png, b""]) | st.binary(max_size=500))
    top_k = draw(st.text(max_size=6).map(lambda t: t.replace("\r", "").replace("\n", "").replace("-", "")))
    return (f'--hypothesis\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n{top_k}\r\n'
            f'--hypothesis\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n").encode("utf-8", "surrogatepass") + content + b"\r\n--hypothesis--\r\n"


def _check_response(response, method: str, path: str) -> None:
    where = f"{method} {path} -> {response.status_code} {response.get_data()[:300]!r}"
    assert response.status_code < 500, where
    assert response.status_code in DOCUMENTED, where
    if method in ("HEAD", "OPTIONS"):
        return
    if response.status_code == 200 and path.split("?")[0] in ("/", "/metrics"):
        return  # the web page and Prometheus text
    assert response.mimetype == "application/json", where
    body = response.get_json()
    if response.status_code >= 400:
        message = error_of(path, body)[1]
        assert message and "Traceback" not in message, where


@FEW
@given(data=st.data(),
       method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
       route=st.sampled_from(ROUTES), content_type=st.sampled_from(CONTENT_TYPES),
       top_k=st.none() | st.text(max_size=8))
def test_generated_requests_never_get_a_5xx_and_errors_are_json(app, real_png, data, method, route, content_type,
                                                                 top_k):
    body = data.draw(bodies(real_png))
    path = route + (f"?top_k={quote(top_k)}" if top_k is not None else "")
    headers = {"Content-Type": content_type} if content_type else {}
    response = app.test_client().open(path, method=method, data=body, headers=headers)
    _check_response(response, method, path)


@FEW
@given(name=st.text(min_size=1, max_size=80), version=st.none() | st.integers(-5, 10**20) | st.text(max_size=10),
       method=st.sampled_from(["POST", "GET"]), suffix=st.sampled_from([":predict", "", "/metadata"]))
def test_any_model_name_in_the_url_is_a_404_or_the_served_model(app, real_png, name, version, method, suffix):
    """Whatever the name (dots, slashes, NUL, unicode, percent escapes), it is compared with the served
    model's name and nothing else: a 404 for every other name, the model for its own."""
    path = f"/v1/models/{quote(name, safe='')}" + (f"/versions/{quote(str(version), safe='')}"
                                                    if version is not None else "")
    path += suffix
    body = json.dumps({"instances": [{"b64": base64.b64encode(real_png).decode()}]}).encode()
    response = app.test_client().open(path, method=method, data=body, headers={"Content-Type": "application/json"})
    _check_response(response, method, path)
    assert "root:" not in response.get_data(as_text=True)
    if response.status_code == 200:
        assert name == "fashion_mnist" and str(version) in ("None", "1")
