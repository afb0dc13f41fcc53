"""Small helpers for building test images from real Fashion-MNIST pictures."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path(os.environ.get("POCKETCNN_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))

# What the service serves unless told otherwise, and the file that holds it in a version folder.
SERVED_FORMAT = "tflite_dynamic"
SERVED_FILE = "model_dynamic_range.tflite"


def copy_version(source: Path, repository: Path, version: int, accuracy: float | None = None,
                 model_bytes: bytes | None = None) -> Path:
    """Publish a copy of `source` as `version` the way export does: written aside, then renamed into place.
    `accuracy` rewrites the served artifact's accuracy in the manifest; `model_bytes` replaces the served file."""
    from contract import read_manifest

    staging = repository / "fashion_mnist" / f".staging-copy-{version}"
    shutil.copytree(source, staging)
    if model_bytes is not None:
        (staging / SERVED_FILE).write_bytes(model_bytes)
    if accuracy is not None:
        manifest = read_manifest(staging)
        manifest["version"] = version
        manifest["artifacts"][SERVED_FORMAT]["accuracy"] = accuracy
        (staging / "manifest.json").write_text(json.dumps(manifest))
    target = repository / "fashion_mnist" / str(version)
    os.rename(staging, target)
    return target


def to_picture(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image)


def encode(picture: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    return encode(to_picture(image), "PNG")


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims width x height (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    # One row of zeros compressed; a real bomb would hold every row, but the header is what must be refused.
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth RGB picture with edges (like a photo, unlike noise) for resize and JPEG tests."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([
        128 + 100 * np.sin(xx / (width / 6) + rng.uniform(0, 3)),
        128 + 100 * np.cos(yy / (height / 5) + rng.uniform(0, 3)),
        (xx + yy) * 255.0 / (width + height),
    ], axis=-1)
    base[height // 3: 2 * height // 3, width // 3: 2 * width // 3] = (240, 30, 30)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
