"""Small helpers for building test images from real Fashion-MNIST pictures."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import struct
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from contract.formats import FORMATS
from serve.settings import DEFAULT_FORMAT

ROOT = Path(__file__).resolve().parent.parent
# Measured on 1,000 test images, the calibration error of the session's small 3-epoch model is noisy by a few
# points: the release default (1.5 %) is for a full test set. Every export of it in the tests passes this.
SESSION_EXPORT_GATES = ["--max-ece", "0.05"]
FASHION_MNIST_DIR = Path(os.environ.get("POCKETCNN_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))

# What the service serves unless told otherwise, and the file that holds it in a version folder.
SERVED_FORMAT = DEFAULT_FORMAT
SERVED_FILE = FORMATS[DEFAULT_FORMAT].file


def served_artifact(version: Path) -> tuple[str, str]:
    """(format, file) the service serves from a version folder: the default format if the version has it, else
    its only artifact (the tiny model has only ONNX)."""
    from contract import read_manifest

    artifacts = read_manifest(version)["artifacts"]
    key = SERVED_FORMAT if SERVED_FORMAT in artifacts else next(iter(artifacts))
    return key, artifacts[key]["file"]


def copy_version(source: Path, repository: Path, version: int, accuracy: float | None = None,
                 model_bytes: bytes | None = None, name: str = "fashion_mnist") -> Path:
    """Publish a copy of `source` as `version` of model `name` the way export does: written aside, then renamed into
    place. `accuracy` rewrites the served artifact's accuracy in the manifest; `model_bytes` replaces the served
    file."""
    from contract import read_manifest

    key, file = served_artifact(source)
    staging = repository / name / f".staging-copy-{version}"
    shutil.copytree(source, staging)
    if model_bytes is not None:
        (staging / file).write_bytes(model_bytes)
    if accuracy is not None:
        manifest = read_manifest(staging)
        manifest["version"] = version
        manifest["artifacts"][key]["accuracy"] = accuracy
        (staging / "manifest.json").write_text(json.dumps(manifest))
    target = repository / name / str(version)
    os.rename(staging, target)
    return target


def doctor_weights(path: Path) -> None:
    """Change a model file's biggest weights so that it still loads but computes something else (re-sign the
    manifest afterwards and only the self-check can notice). ONNX is rewritten through its protobuf; in a
    .tflite, bytes in the middle (the dense layer's weights) are flipped."""
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        biggest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        biggest.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(biggest), biggest.name))
        path.write_bytes(model.SerializeToString())
        return
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 20000] = bytes(b ^ 0x5A for b in data[middle:middle + 20000])
    path.write_bytes(bytes(data))


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
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


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


def open_sockets(pid: int) -> int:
    """Sockets the process holds open; descriptors closed while we look are not counted."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += "socket" in os.readlink(fd)
        except FileNotFoundError:
            pass
    return count


def server_side_connections(port: int) -> int:
    """Connections that a process serving this loopback port still holds open (from /proc/net/tcp: not
    listening, and with an inode: TIME_WAIT and other orphans have none)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        count += int(local.rsplit(":", 1)[1], 16) == port and state != "0A" and inode != "0"
    return count


def wait_until(condition, timeout: float = 30.0, what: str = "the condition", interval: float = 0.01) -> float:
    """Poll `condition()` until it is true; return the seconds it took, or fail the test after `timeout`."""
    import time

    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} within {timeout} s"
        time.sleep(interval)
    return time.monotonic() - started


class AnswerCounter:
    """Counts a load generator's answers as they come (clients.loadgen.run_load's on_answer)."""

    def __init__(self):
        import threading

        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, outcome) -> None:
        with self._lock:
            self.count += 1


def answers(url: str, photos: list[bytes]) -> list[dict]:
    """The service's answers over HTTP (one kept-alive connection), one per photo."""
    where = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    found = []
    try:
        for photo in photos:
            connection.request("POST", "/predict", body=photo, headers={"Content-Type": "application/octet-stream"})
            response = connection.getresponse()
            found.append(json.loads(response.read()))
            assert response.status == 200, found[-1]
    finally:
        connection.close()
    return found


def served_manifest(url: str) -> dict:
    with urllib.request.urlopen(url + "/model", timeout=10) as response:
        return json.loads(response.read())["manifest"]


PROTOCOL_PREFIXES = ("/v1/", "/v2")  # TF Serving's and the Open Inference Protocol's routes


def error_of(path: str, body: dict) -> tuple[str | None, str]:
    """(code, message) of an error body, in the shape its route promises: {"error": "<sentence>"} on the TF Serving
    and V2 routes (as those servers write it, no code), {"error": {"code", "message"}} everywhere else."""
    if urllib.parse.urlsplit(path).path.startswith(PROTOCOL_PREFIXES):
        assert set(body) == {"error"} and isinstance(body["error"], str), body
        return None, body["error"]
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"], body["error"]["message"]
