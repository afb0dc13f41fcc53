"""Bad input, tried for real: a corpus generated from real Fashion-MNIST images and generators, sent
to a real gunicorn (two workers, tight limits) over loopback.

Every case has the status the API documents: 200 with a correct answer for valid-but-odd images
(compared with the answer for the plain PNG of the same picture), 400/404/405/413/415 with a JSON
error for the rest ({"error": {"code", "message"}}; on the TF Serving and V2 routes {"error": "<sentence>"}, as those
servers write it). After the whole corpus: no 5xx anywhere, the same
worker processes still running, /healthz and /readyz 200, and no crash, timeout or traceback in
gunicorn's log.

    .venv/bin/python -m pytest -q tests/test_reliability_inputs.py -s
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import random
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable
from urllib.parse import quote

import numpy as np
import pytest
from helpers import encode, error_of, photo_like, png_bytes, png_claiming_size, served_artifact, to_picture
from PIL import Image
from tiny_model import TINY_FORMAT

from serve.testing import GunicornServer

MAX_BYTES = 2_000_000   # the server under test: POCKETCNN_MAX_CONTENT_LENGTH
MAX_IMAGES = 8          # POCKETCNN_MAX_IMAGES
MODEL = "fashion_mnist"
LOG_PROBLEMS = ("WORKER TIMEOUT", "was sent", "Traceback", "Error handling request", "Exception in worker")


# --- the cases -------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    method: str
    path: str
    body: bytes | Iterable[bytes] | None = None
    headers: dict = field(default_factory=dict)
    status: int | tuple[int, ...] = 400
    code: str | tuple[str, ...] | None = None  # the error code(s) the API documents for this input
    same_as: str | None = None         # 200 cases: the reference picture whose answer this must equal...
    top1_as: str | None = None         # ...or (lossy encodings) whose most likely class this must have
    allow: str | None = None           # 405 cases: the method the Allow header must name
    check: Callable[[dict], None] | None = None


def raw(data: bytes, content_type: str | None = "application/octet-stream") -> dict:
    return {"body": data, "headers": {"Content-Type": content_type} if content_type else {}}


def as_json(value) -> dict:
    return {"body": json.dumps(value).encode(), "headers": {"Content-Type": "application/json"}}


def multipart(files: list[tuple[str, bytes]], fields: dict | None = None, field_name: str = "image") -> dict:
    boundary = "reliability-" + "b" * 16
    parts = []
    for key, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for filename, data in files:
        quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{quoted}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode("utf-8") + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return {"body": body, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def chunks(data: bytes, size: int = 65536) -> Iterable[bytes]:
    """The body as an iterator: http.client sends it with Transfer-Encoding: chunked (no Content-Length)."""
    return (data[i:i + size] for i in range(0, len(data), size))


def png_bomb(width: int, height: int) -> bytes:
    """A real decompression bomb: a 1-bit PNG whose every row is there, all zeros, deflated to ~0.1 %."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    deflate = zlib.compressobj(9)
    rows_per_block = 1000
    compressed = b"".join(deflate.compress(row * min(rows_per_block, height - start))
                          for start in range(0, height, rows_per_block)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", compressed) + chunk(b"IEND", b"")


def gif_claiming_size(width: int, height: int) -> bytes:
    """A GIF header and one tiny frame on a logical screen of width x height."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b"\x3b"


def upscale(image: np.ndarray, factor: int = 4) -> Image.Image:
    """The 28x28 picture at 112x112 (nearest neighbour): lossy encoders then keep its shape."""
    picture = to_picture(image)
    return picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)


def palette_png(image: np.ndarray, transparent_index: int) -> bytes:
    grey = image.squeeze(-1)
    picture = Image.frombytes("P", (grey.shape[1], grey.shape[0]), grey.tobytes())
    picture.putpalette([v for i in range(256) for v in (i, i, i)])
    return encode(picture, "PNG", transparency=transparent_index)


def exif_rotated_jpeg(image: np.ndarray, orientation: int) -> bytes:
    """The picture stored turned (as a phone held sideways stores it), with the EXIF tag that turns it back."""
    upright = upscale(image).convert("RGB")
    stored = {6: upright.transpose(Image.Transpose.ROTATE_90), 8: upright.transpose(Image.Transpose.ROTATE_270),
              3: upright.transpose(Image.Transpose.ROTATE_180)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif)


def build_corpus(pictures: dict[str, np.ndarray], seed: int = 0) -> list[Case]:
    """Every bad or odd input the issue lists, and more, generated from `pictures` (name -> 28x28x1 uint8).

    `pictures` holds at least "a", "b" and "c": real Fashion-MNIST images of three different classes
    that the model classifies with confidence."""
    rng = np.random.default_rng(seed)
    a, b, c = pictures["a"], pictures["b"], pictures["c"]
    png_a = png_bytes(a)
    cases: list[Case] = []

    def add(name, method="POST", path="/predict", **kwargs):
        cases.append(Case(name, method, kwargs.pop("path", path), **kwargs))

    # -- empty --------------------------------------------------------------------------------
    add("empty body, no content type", body=b"", code="missing_image")
    add("empty body as image/png", **raw(b"", "image/png"), code="empty_image")
    add("empty file in multipart", **multipart([("empty.png", b"")]), code="empty_image")
    add("empty base64 string", **as_json({"image": ""}), code="empty_image")
    add("multipart without the image field", **multipart([("a.png", png_a)], field_name="photo"), code="missing_image")
    add("multipart with no parts at all", **multipart([]), code="missing_image")

    # -- text, HTML, other documents ---------------------------------------------------------------
    text = "This is a text file, not a photo.\n".encode() * 20
    html = b"<!doctype html><html><head><title>x</title></head><body><img src=x onerror=alert(1)></body></html>"
    add("text as text/plain", **raw(text, "text/plain"), status=415, code="unsupported_media_type")
    add("HTML as text/html", **raw(html, "text/html"), status=415, code="unsupported_media_type")
    add("XML as application/xml", **raw(b"<?xml version='1.0'?><a/>", "application/xml"), status=415,
        code="unsupported_media_type")
    add("form-urlencoded", **raw(b"image=abc", "application/x-www-form-urlencoded"), status=415,
        code="unsupported_media_type")
    add("bytes with no content type", **raw(png_a, None), status=415, code="unsupported_media_type")
    add("text declared image/jpeg", **raw(text, "image/jpeg"), code="invalid_image")
    add("HTML declared image/png", **raw(html, "image/png"), code="invalid_image")
    add("HTML in multipart", **multipart([("page.html", html)]), code="invalid_image")
    add("PDF header", **raw(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n" * 10), code="invalid_image")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("a.png", png_a)
    add("a PNG inside a zip", **raw(zipped.getvalue()), code="invalid_image")

    # -- random bytes -----------------------------------------------------------------------------
    for size in (1, 7, 100, 4096, 300_000):
        add(f"random bytes ({size})", **raw(rng.integers(0, 256, size, dtype=np.uint8).tobytes()), code="invalid_image")
    for magic, fmt in ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff\xe0", "JPEG"), (b"GIF89a", "GIF"),
                       (b"RIFF\x00\x10\x00\x00WEBPVP8 ", "WebP"), (b"BM", "BMP"), (b"II*\x00", "TIFF")):
        noise = rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()
        # The random bytes may form a header that claims billions of pixels: then the 413 is the right answer.
        add(f"{fmt} signature then random bytes", **raw(magic + noise), status=(400, 413),
            code=("invalid_image", "image_too_large"))

    # -- truncated and damaged files (made from a real photo-like picture and a real image) ----------
    for fmt in ("JPEG", "PNG"):
        whole = encode(photo_like(320, 240, seed=1), fmt)
        for fraction in (0.02, 0.1, 0.5, 0.9):
            add(f"truncated {fmt} ({int(fraction * 100)} %)", **raw(whole[: int(len(whole) * fraction)]),
                code="invalid_image")
    damaged = bytearray(encode(upscale(a), "PNG"))
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte: the chunk's CRC no longer matches
    add("PNG with a flipped byte (bad CRC)", **raw(bytes(damaged)), code="invalid_image")

    # -- sizes -------------------------------------------------------------------------------------
    add("0x0 PNG", **raw(png_claiming_size(0, 0), "image/png"), code="invalid_image")
    add("1x1 PNG", **raw(encode(Image.new("L", (1, 1), 200), "PNG"), "image/png"), status=200)
    add("1x1 JPEG", **raw(encode(Image.new("RGB", (1, 1), (10, 200, 30)), "JPEG"), "image/jpeg"), status=200)
    add("1x100000 strip", **raw(encode(Image.new("L", (100_000, 1), 90), "PNG"), "image/png"), status=200)
    add("100000x1 strip", **raw(encode(Image.new("L", (1, 100_000), 90), "PNG"), "image/png"), status=200)
    add("4000x3000 photo (JPEG)", **raw(encode(photo_like(4000, 3000, seed=2), "JPEG", quality=80), "image/jpeg"),
        status=200)
    bomb = png_bomb(30_000, 30_000)
    assert len(bomb) < MAX_BYTES / 10, "the bomb must be small: it is its pixels that are refused"
    add(f"PNG bomb: {len(bomb):,} bytes decoding to 30000x30000", **raw(bomb, "image/png"), status=413,
        code="image_too_large")
    add("PNG header claiming 30000x30000", **raw(png_claiming_size(30_000, 30_000), "image/png"), status=413,
        code="image_too_large")
    add("GIF header claiming 65535x65535", **raw(gif_claiming_size(65_535, 65_535), "image/gif"), status=413,
        code="image_too_large")
    add("PNG bomb as base64 JSON", **as_json({"image": b64(bomb)}), status=413, code="image_too_large")

    # -- byte and count limits -----------------------------------------------------------------------
    over = rng.integers(0, 256, MAX_BYTES + 1, dtype=np.uint8).tobytes()
    add("raw upload 1 byte over the limit", **raw(over, "image/png"), status=413, code="request_entity_too_large")
    add("raw upload 5x the limit", **raw(over * 5, "image/png"), status=413, code="request_entity_too_large")
    add("chunked upload over the limit", body=chunks(over), headers={"Content-Type": "image/png"}, status=413,
        code="request_entity_too_large")
    add("chunked: a valid PNG then junk past the limit", body=chunks(png_a + over),
        headers={"Content-Type": "image/png"}, status=413, code="request_entity_too_large")
    add("chunked upload within the limit", body=chunks(png_a, 100), headers={"Content-Type": "image/png"},
        status=200, same_as="a")
    add("multipart over the limit", **multipart([("big.png", over)]), status=413, code="request_entity_too_large")
    add("base64 JSON over the limit", **as_json({"image": b64(over)}), status=413, code="request_entity_too_large")
    add(f"{MAX_IMAGES + 1} files in one multipart request",
        **multipart([(f"{i}.png", png_a) for i in range(MAX_IMAGES + 1)]), status=413, code="too_many_images")
    add(f"{MAX_IMAGES + 1} base64 images in one JSON request", **as_json({"images": [b64(png_a)] * (MAX_IMAGES + 1)}),
        status=413, code="too_many_images")
    add(f"{MAX_IMAGES + 1} TF Serving instances", path=f"/v1/models/{MODEL}:predict",
        **as_json({"instances": [{"b64": b64(png_a)}] * (MAX_IMAGES + 1)}),
        status=413, code="too_many_images")
    add(f"{MAX_IMAGES} files: the most allowed", **multipart([(f"{i}.png", png_a) for i in range(MAX_IMAGES)]),
        status=200)

    # -- valid but odd images: the answer must be the answer for the plain PNG -----------------------------
    frames = [to_picture(x) for x in (a, b, c)]
    add("animated GIF (first frame is a)", **raw(encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                                        duration=100, loop=0), "image/gif"), status=200, same_as="a")
    add("multi-page TIFF (first page is a)", **raw(encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
                                                   "image/tiff"), status=200, same_as="a")
    add("animated WebP (first frame is a)", **raw(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                                                         lossless=True), "image/webp"), status=200, same_as="a")
    add("16-bit PNG", **raw(encode(Image.fromarray(a.squeeze(-1).astype(np.uint16) * 257), "PNG"), "image/png"),
        status=200, same_as="a")
    add("16-bit TIFF", **raw(encode(Image.fromarray(b.squeeze(-1).astype(np.uint16) * 257), "TIFF"), "image/tiff"),
        status=200, same_as="b")
    add("palette PNG, transparent index unused", **raw(palette_png(a, int(np.setdiff1d(np.arange(256), a)[0])),
                                                      "image/png"), status=200, same_as="a")
    add("palette PNG, background transparent (shown on white)",
        **raw(palette_png(c, int(np.bincount(c.ravel()).argmax())), "image/png"), status=200)
    rgba = np.dstack([np.repeat(b, 3, axis=-1), np.full(b.shape[:2], 255, np.uint8)])
    add("RGBA PNG, opaque", **raw(encode(Image.fromarray(rgba, "RGBA"), "PNG"), "image/png"), status=200, same_as="b")
    add("LA PNG, opaque", **raw(encode(to_picture(c).convert("LA"), "PNG"), "image/png"), status=200, same_as="c")
    add("RGB PNG", **raw(encode(to_picture(c).convert("RGB"), "PNG"), "image/png"), status=200, same_as="c")
    add("BMP", **raw(encode(to_picture(b), "BMP"), "image/bmp"), status=200, same_as="b")
    add("lossless WebP", **raw(encode(to_picture(c), "WEBP", lossless=True), "image/webp"), status=200, same_as="c")
    add("lossy WebP", **raw(encode(upscale(a), "WEBP", quality=90), "image/webp"), status=200, top1_as="a")
    add("CMYK JPEG", **raw(encode(upscale(b).convert("CMYK"), "JPEG", quality=95), "image/jpeg"), status=200,
        top1_as="b")
    add("progressive JPEG", **raw(encode(upscale(c), "JPEG", quality=95, progressive=True), "image/jpeg"), status=200,
        top1_as="c")
    for orientation in (3, 6, 8):
        add(f"EXIF-rotated JPEG (orientation {orientation})", **raw(exif_rotated_jpeg(a, orientation), "image/jpeg"),
            status=200, top1_as="a")
    broken_exif = encode(upscale(b), "JPEG", quality=95, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    add("JPEG with malformed EXIF", **raw(broken_exif, "image/jpeg"), status=200, top1_as="b")
    add("PNG declared image/jpeg", **raw(png_a, "image/jpeg"), status=200, same_as="a")
    add("PNG declared application/octet-stream", **raw(png_a), status=200, same_as="a")
    add("PNG as a base64 data URL", **as_json({"image": "data:image/png;base64," + b64(png_a)}), status=200,
        same_as="a")
    add("PNG as URL-safe base64 without padding",
        **as_json({"image": base64.urlsafe_b64encode(png_a).decode().rstrip("=")}),
        status=200, same_as="a")
    add("PNG as MIME base64 with line breaks",
        **as_json({"image": base64.encodebytes(png_a).decode()}), status=200, same_as="a")

    # -- formats the service does not open -----------------------------------------------------------
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><rect width="28" height="28"/></svg>'
    add("SVG", **raw(svg, "image/svg+xml"), code="invalid_image")
    add("SVG with an external entity", **raw(b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                                             b"<svg>&x;</svg>", "image/svg+xml"), code="invalid_image")
    add("ICO", **raw(encode(to_picture(a).convert("RGB").resize((32, 32)), "ICO"), "image/x-icon"),
        code="invalid_image")
    add("PPM", **raw(encode(to_picture(a), "PPM"), "image/x-portable-pixmap"), code="invalid_image")
    add("PCX", **raw(encode(to_picture(a), "PCX"), "image/x-pcx"), code="invalid_image")
    add("TGA", **raw(encode(to_picture(a), "TGA"), "image/x-tga"), code="invalid_image")

    # -- JSON of the wrong shape -------------------------------------------------------------------
    for label, value in (("a list", ["image"]), ("a string", "image"), ("a number", 12), ("null", None),
                         ("true", True)):
        add(f"JSON body that is {label}", **as_json(value), code="invalid_json")
    add("JSON: empty object", **as_json({}), code="missing_image")
    add("JSON: 'picture' instead of 'image'", **as_json({"picture": b64(png_a)}), code="missing_image")
    add("JSON: both 'image' and 'images'", **as_json({"image": b64(png_a), "images": [b64(png_a)]}),
        code="missing_image")
    add("JSON: image is a number", **as_json({"image": 12}), code="invalid_base64")
    add("JSON: image is null", **as_json({"image": None}), code="invalid_base64")
    add("JSON: image is a list", **as_json({"image": [b64(png_a)]}), code="invalid_base64")
    add("JSON: image is an object", **as_json({"image": {"data": b64(png_a)}}), code="invalid_base64")
    add("JSON: images is a string", **as_json({"images": b64(png_a)}), code="invalid_json")
    add("JSON: images is empty", **as_json({"images": []}), code="invalid_json")
    add("JSON: images holds numbers", **as_json({"images": [1, 2]}), code="invalid_base64")
    add("JSON: syntax error", path="/predict", body=b'{"image": "abc"', headers={"Content-Type": "application/json"},
        code="invalid_json")
    add("JSON: not UTF-8", path="/predict", body=b'{"image": "\xff\xfe\xfd"}',
        headers={"Content-Type": "application/json"},
        code="invalid_json")
    add("JSON: nested 100000 deep", path="/predict", body=b"[" * 100_000 + b"]" * 100_000,
        headers={"Content-Type": "application/json"}, code="invalid_json")
    add("JSON: objects nested 50000 deep", path="/predict", body=b'{"image":' * 50_000 + b"1" + b"}" * 50_000,
        headers={"Content-Type": "application/json"}, code="invalid_json")
    add("JSON: a 5000-digit number", path="/predict", body=b'{"image": ' + b"9" * 5000 + b"}",
        headers={"Content-Type": "application/json"}, code="invalid_json")
    tf = f"/v1/models/{MODEL}:predict"
    add("TF Serving: empty object", path=tf, **as_json({}), code="invalid_json")
    add("TF Serving: body is a list", path=tf, **as_json([[0]]), code="invalid_json")
    add("TF Serving: instances is a string", path=tf, **as_json({"instances": "x"}), code="invalid_json")
    add("TF Serving: instances is empty", path=tf, **as_json({"instances": []}), code="invalid_json")
    add("TF Serving: inputs.image is a number", path=tf, **as_json({"inputs": {"image": 3}}), code="invalid_json")
    add("TF Serving: instance is a number", path=tf, **as_json({"instances": [1]}), code="invalid_instance")
    add("TF Serving: instance of the wrong shape", path=tf, **as_json({"instances": [[1, 2, 3]]}),
        code="invalid_instance")
    add("TF Serving: ragged instance", path=tf, **as_json({"instances": [[[1, 2], [3]]]}), code="invalid_instance")
    add("TF Serving: pixels of 300", path=tf, **as_json({"instances": [np.full((28, 28), 300).tolist()]}),
        code="invalid_instance")
    add("TF Serving: negative pixels", path=tf, **as_json({"instances": [np.full((28, 28, 1), -1).tolist()]}),
        code="invalid_instance")
    add("TF Serving: NaN pixels", path=tf, body=("{\"instances\": [" + json.dumps(np.zeros((28, 28)).tolist())
                                                 .replace("0.0", "NaN", 1) + "]}").encode(),
        headers={"Content-Type": "application/json"}, code="invalid_instance")
    add("TF Serving: pixels as strings", path=tf, **as_json({"instances": [[["a"] * 28] * 28]}),
        code="invalid_instance")
    add("TF Serving: instance nested 900 deep", path=tf,
        body=b'{"instances": [' + b"[" * 900 + b"1" + b"]" * 900 + b"]}",
        headers={"Content-Type": "application/json"}, code="invalid_instance")
    add("TF Serving: b64 is a number", path=tf, **as_json({"instances": [{"b64": 5}]}), code="invalid_base64")
    add("TF Serving: b64 of text", path=tf, **as_json({"instances": [{"b64": b64(text)}]}), code="invalid_image")
    add("TF Serving: JSON nested 100000 deep", path=tf, body=b"[" * 100_000,
        headers={"Content-Type": "application/json"},
        code="invalid_json")
    add("TF Serving: a valid b64 PNG", path=tf, **as_json({"instances": [{"b64": b64(png_a)}]}), status=200)
    add("TF Serving: pixels as nested lists", path=tf, **as_json({"instances": [a.squeeze(-1).tolist()]}), status=200)

    # -- invalid base64 -------------------------------------------------------------------------------
    for label, text_value in (("percent signs", "%%% not base64 %%%"), ("only padding", "===="),
                              ("padding in the middle", "iVBO=Rw0KGgo"), ("non-ASCII", "ééé"),
                              ("NUL characters", "\x00\x00\x00\x00"), ("a bad data URL", "data:image/png;base64,@@@"),
                              ("mixed alphabets", "ab+c-d_e/f"), ("emoji", "👟👟👟👟")):
        add(f"invalid base64: {label}", **as_json({"image": text_value}), code="invalid_base64")
    add("invalid base64 in a batch", **as_json({"images": [b64(png_a), "!!!"]}), code="invalid_base64")
    add("TF Serving: invalid base64", path=tf, **as_json({"instances": [{"b64": "!!"}]}), code="invalid_base64")
    add("base64 of random bytes", **as_json({"image": b64(rng.integers(0, 256, 999, dtype=np.uint8).tobytes())}),
        code="invalid_image")

    # -- top_k ------------------------------------------------------------------------------------------
    for value in ("-1", "0", "abc", "10000", "2.5", "1e3", " ", "%FF", "0x3"):
        add(f"top_k={value!r} in the query", path=f"/predict?top_k={quote(value, safe='%')}", **raw(png_a, "image/png"),
            code="invalid_top_k")
    for value in ("-1", "0", "abc", "10000"):
        add(f"top_k={value!r} in the form", **multipart([("a.png", png_a)], {"top_k": value}), code="invalid_top_k")
    for value in (-1, 0, "abc", 10000, 2.5, True, [3], {"k": 3}, "NaN"):
        add(f"top_k={value!r} in JSON", **as_json({"image": b64(png_a), "top_k": value}), code="invalid_top_k")
    add("top_k=3", path="/predict?top_k=3", **raw(png_a, "image/png"), status=200,
        check=lambda body: _assert(len(body["predictions"]) == 3, "top_k=3 gives 3 classes"))
    add("top_k=10 (every class)", **as_json({"image": b64(png_a), "top_k": 10}), status=200, same_as="a")

    # -- wrong methods --------------------------------------------------------------------------------------
    for method in ("GET", "PUT", "DELETE", "PATCH", "TRACE"):
        add(f"{method} /predict", method=method, path="/predict", status=405, code="method_not_allowed", allow="POST")
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/model", f"/v1/models/{MODEL}"):
        add(f"POST {path}", path=path, **raw(png_a), status=405, code="method_not_allowed", allow="GET")
    add(f"GET {tf}", method="GET", path=tf, status=405, code="method_not_allowed", allow="POST")
    add(f"PUT {tf}", method="PUT", path=tf, **raw(png_a), status=405, code="method_not_allowed", allow="POST")
    add(f"DELETE /v1/models/{MODEL}", method="DELETE", path=f"/v1/models/{MODEL}", status=405,
        code="method_not_allowed", allow="GET")
    add("GET on an unknown path", method="GET", path="/predict/now", status=404, code="not_found")

    # -- file names ------------------------------------------------------------------------------------
    names = ["обувь 👟 ботинок.png", "靴.png", "\u202egnp.exe", "a" * 10_000 + ".png", "../../../etc/passwd",
             "C:\\Windows\\system32\\boot.png", "name with \"quotes\" and ; semicolons.png", " .png", "\t.png"]
    for name in names:
        add(f"file name {name[:24]!r}{'... (' + str(len(name)) + ' chars)' if len(name) > 24 else ''}",
            **multipart([(name, png_a)]), status=200, same_as="a")
    add("batch with unicode and very long file names", **multipart([(names[0], png_a), (names[3], png_bytes(b))]),
        status=200, check=_filenames_echoed([names[0], names[3]]))

    # -- the model name of the TF Serving route: path tricks -----------------------------------------------
    tricks = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%2e%2e", "..", ".",
              f"{MODEL}%2F..%2F..%2F..%2Fetc%2Fpasswd", f"..%2F{MODEL}", f"{MODEL}%00", "%00", "..%5C..%5Cetc",
              "%252e%252e%252f", "~root", "%C0%AE%C0%AE", f"{MODEL}%20", f"{MODEL.upper()}", "a" * 3000,
              f"{MODEL}%2F1", "%ff%fe", "/etc/passwd", "%E2%80%A5%2F", f"/{MODEL}", f"{MODEL}/"]
    for trick in tricks:
        body = json.dumps({"instances": [{"b64": b64(png_a)}]}).encode()
        for template in ("/v1/models/{}:predict", "/v1/models/{}/versions/1:predict"):
            add(f"model name {trick[:40]!r} in {template.split('{}')[1][:12]}", path=template.format(trick), body=body,
                headers={"Content-Type": "application/json"}, status=404)
        add(f"model name {trick[:40]!r} (status)", method="GET", path=f"/v1/models/{trick}", status=404)
        add(f"model name {trick[:40]!r} (metadata)", method="GET", path=f"/v1/models/{trick}/metadata", status=404)
    for version in ("0", "2", "007", "99999999999999999999999"):
        add(f"version {version}", path=f"/v1/models/{MODEL}/versions/{version}:predict",
            **as_json({"instances": [{"b64": b64(png_a)}]}), status=404, code="version_not_found")
    for version in ("-1", "1.0", "..", "%2e%2e", "1%2F..%2F..", "1abc"):
        add(f"version {version!r}", path=f"/v1/models/{MODEL}/versions/{version}:predict",
            **as_json({"instances": [{"b64": b64(png_a)}]}), status=404)
    return cases


def _assert(condition: bool, message: str) -> None:
    assert condition, message


def _filenames_echoed(names: list[str]):
    def check(body: dict) -> None:
        assert [r["filename"] for r in body["results"]] == names
    return check


# --- sending them -----------------------------------------------------------------------------------

def send(url: str, case: Case, timeout: float = 60.0) -> tuple[int, dict, bytes]:
    """One request exactly as the case describes it (raw path, no normalisation), on its own connection."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        body = case.body
        headers = dict(case.headers)
        chunked = body is not None and not isinstance(body, (bytes, bytearray))
        if isinstance(body, (bytes, bytearray)) or body is None:
            headers.setdefault("Content-Length", str(len(body or b"")))
        connection.request(case.method, case.path, body=body, headers=headers, encode_chunked=chunked)
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


def check_answer(case: Case, status: int, headers: dict, data: bytes, references: dict) -> None:
    where = f"{case.name}: {status} {data[:300]!r}"
    assert status < 500, where
    assert status in (case.status if isinstance(case.status, tuple) else (case.status,)), where
    assert headers.get("content-type", "").startswith("application/json"), where
    body = json.loads(data)
    if status >= 400:
        code, message = error_of(case.path, body)
        assert message.strip(), where
        assert "Traceback" not in message, where
        if case.code and code is not None:  # the TF Serving and V2 routes' errors carry a sentence only
            assert code in (case.code if isinstance(case.code, tuple) else (case.code,)), where
        if case.allow:
            assert case.allow in headers.get("allow", ""), where
        assert "root:" not in data.decode("utf-8", "replace"), "nothing from outside the service is ever read"
        return
    if "predictions" in body and isinstance(body["predictions"][0], list):  # TF Serving
        rows = np.asarray(body["predictions"])
        assert rows.shape[1] == 10 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-4), where
        return
    answers = [body["predictions"]] if "predictions" in body else [r["predictions"] for r in body["results"]]
    for predictions in answers:
        percents = [p["percent"] for p in predictions]
        assert percents == sorted(percents, reverse=True), where
        assert len({p["index"] for p in predictions}) == len(predictions), where
        if len(predictions) == 10:
            assert sum(percents) == pytest.approx(100.0, abs=1e-6), where
    if case.same_as:
        assert body["predictions"] == references[case.same_as], where
    if case.top1_as:
        assert body["predictions"][0]["label"] == references[case.top1_as][0]["label"], where
    if case.check:
        case.check(body)


# --- the server and the pictures -----------------------------------------------------------------------

def worker_pids(master: int) -> set[int]:
    from pathlib import Path

    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


@pytest.fixture(scope="module")
def strict_server(tiny_repository, tmp_path_factory):
    """gunicorn with two workers and tight limits: 2 MB per request, 8 images per request."""
    log = tmp_path_factory.mktemp("reliability-inputs") / "gunicorn.log"
    server = GunicornServer(tiny_repository, env={"POCKETCNN_MODEL_FORMAT": TINY_FORMAT,
        "POCKETCNN_MAX_CONTENT_LENGTH": str(MAX_BYTES), "POCKETCNN_MAX_IMAGES": str(MAX_IMAGES),
        "POCKETCNN_POLL_SECONDS": "0", "POCKETCNN_TEST_LOG": str(log),
    }).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pictures(fashion_mnist_test, tiny_version):
    """Three real test images of different classes that the served model gets right with > 95 %, also when
    enlarged 4x (the lossy and rotated cases are: the input recipe then trims and fits them again)."""
    from contract import decode_image, input_recipe, read_manifest
    from contract.runtime import open_runner

    x, y = fashion_mnist_test
    runner = open_runner(tiny_version / served_artifact(tiny_version)[1], "onnxruntime")
    recipe = input_recipe(read_manifest(tiny_version))
    probabilities = runner.predict(x[:500])
    chosen: dict[int, int] = {}
    for index in np.argsort(-probabilities.max(axis=1)):
        label = int(y[index])
        if probabilities[index].argmax() == label and probabilities[index].max() > 0.95 and label not in chosen:
            enlarged = decode_image(encode(upscale(x[index]), "PNG"), 28, 28, 1, recipe=recipe)
            if runner.predict(enlarged[None])[0].argmax() != label:
                continue
            chosen[label] = int(index)
        if len(chosen) == 3:
            break
    assert len(chosen) == 3, "the served model is confident on at least three classes"
    return dict(zip("abc", (x[i] for i in chosen.values()), strict=True))


@pytest.mark.slow
def test_the_bad_input_corpus_gets_documented_answers_and_the_service_stays_healthy(strict_server, pictures):
    url = strict_server.url
    master = strict_server.process.pid
    workers_before = worker_pids(master)
    references = {}
    for key, image in pictures.items():
        status, _, data = send(url, Case("reference", "POST", "/predict", png_bytes(image),
                                         {"Content-Type": "image/png"}))
        assert status == 200
        references[key] = json.loads(data)["predictions"]

    corpus = build_corpus(pictures)
    random.Random(0).shuffle(corpus)  # no case relies on the one before it
    statuses: Counter = Counter()
    failures = []
    for case in corpus:
        status, headers, data = send(url, case)
        statuses[status] += 1
        try:
            check_answer(case, status, headers, data, references)
        except AssertionError as err:
            failures.append(f"{case.name}: {err}")
    print(f"\nbad-input corpus: {len(corpus)} cases against gunicorn (2 workers); statuses "
          f"{dict(sorted(statuses.items()))}")
    assert not failures, "\n".join(failures)
    assert not [s for s in statuses if s >= 500]

    # Still healthy, and the same two worker processes answered everything (none crashed or was replaced).
    for path in ("/healthz", "/readyz"):
        assert send(url, Case(path, "GET", path))[0] == 200, path
    status, _, data = send(url, Case("after", "POST", "/predict", png_bytes(pictures["a"]),
                                     {"Content-Type": "image/png"}))
    assert status == 200 and json.loads(data)["predictions"] == references["a"]
    assert worker_pids(master) == workers_before, "a worker crashed or was replaced while the corpus ran"
    metrics = send(url, Case("metrics", "GET", "/metrics"))[2].decode()
    assert 'status="5' not in metrics, "no 5xx was ever counted"
    log = strict_server.output()
    for problem in LOG_PROBLEMS:
        assert problem not in log, f"gunicorn log shows {problem!r}:\n{log}"


def what_the_body_is(body) -> set[str]:
    """What a case's bytes really are, found by opening them (not from the case's name)."""
    data = b"".join(body) if body is not None and not isinstance(body, bytes) else (body or b"")
    found = ({f"{len(data)} bytes"} | ({"empty"} if not data else set())
             | ({"over the limit"} if len(data) > MAX_BYTES else set()))
    if data.lstrip().startswith((b"<svg", b"<?xml")):
        found.add("svg")
    try:
        document = json.loads(data)
        found.add("json")
        if isinstance(document, dict) and isinstance(document.get("image"), str):
            try:
                base64.b64decode(document["image"], validate=True)
            except (ValueError, TypeError):
                found.add("invalid base64")
    except (ValueError, UnicodeDecodeError, RecursionError):  # the corpus holds JSON nested too deep on purpose
        pass
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:  # the size its header claims (IHDR)
        found.add("{}x{}".format(*struct.unpack(">II", data[16:24])))
    elif data.startswith((b"GIF87a", b"GIF89a")) and len(data) >= 10:  # (logical screen)
        found.add("{}x{}".format(*struct.unpack("<HH", data[6:10])))
    try:
        picture = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - anything Pillow cannot even identify, or refuses as a bomb
        return found | {"not an image"}
    fmt = (picture.format or "").lower()
    found |= {fmt, f"{picture.width}x{picture.height}", f"{picture.mode.lower()} {fmt}"}
    if getattr(picture, "n_frames", 1) > 1:
        found.add(f"{'animated' if fmt in ('gif', 'webp') else 'multi-page'} {fmt}")
    if fmt == "jpeg" and picture.getexif().get(0x0112, 1) != 1:
        found.add("exif-rotated jpeg")
    try:
        picture.load()
    except Exception:  # noqa: BLE001 - a header Pillow reads, with data it cannot decode
        found.add(f"truncated {fmt}")
    return found


def test_the_corpus_is_generated_and_holds_every_kind_of_input(fashion_mnist_test):
    """Different seeds give different random inputs, and every kind of input the corpus promises is really in
    it: each found by opening the bytes, not by reading the cases' names."""
    x, _ = fashion_mnist_test
    pictures = {"a": x[0], "b": x[1], "c": x[2]}
    first, second = build_corpus(pictures, seed=0), build_corpus(pictures, seed=1)
    assert len(first) == len(second) >= 200
    assert any(a.body != b.body for a, b in zip(first, second, strict=True) if isinstance(a.body, bytes))
    kinds = set().union(*(what_the_body_is(case.body) for case in first))
    for kind in ("empty", "not an image", "svg", "ico", "bmp", "webp", "animated gif", "animated webp",
                 "multi-page tiff", "i;16 png", "cmyk jpeg", "p png", "exif-rotated jpeg", "truncated jpeg",
                 "truncated png", "1x1", "100000x1", "1x100000", "30000x30000", "65535x65535", "0x0",
                 "over the limit", "json", "invalid base64"):
        assert kind in kinds, f"no input in the corpus is {kind!r}"
    paths = {case.path.split("?")[0] for case in first}
    assert {"/predict", f"/v1/models/{MODEL}:predict"} <= paths
    assert {case.method for case in first} >= {"POST", "GET", "PUT"}
