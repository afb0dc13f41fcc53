"""Ask a running pocketcnn service what is in a photo.

Standard library only (urllib), so this file works on any Python 3.9+ without installing anything:

    >>> from clients.predict import predict
    >>> answer = predict("shoe.jpg", url="http://127.0.0.1:8000")
    >>> answer["predictions"][0]
    {'label': 'Ankle boot', 'index': 9, 'percent': 97.31}

Command line (`python -m clients.predict --help`, or `pocketcnn-predict` once installed):

    python -m clients.predict shoe.jpg shirt.png [--url URL] [--top-k K] [--json]

Exit status: 0 every photo was classified, 1 the service refused a photo (its message is printed),
2 the service is down or not ready, or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Iterable, Union

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
PREDICT_PATH = "/predict"
FIELD_NAME = "image"

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview]

# First bytes of the formats the service accepts, to label each multipart part with its real type
# (the service decodes the bytes whatever the label says, but proxies and logs read it).
_MAGIC_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}

BAR_WIDTH = 30  # characters of a 100 % bar
_EIGHTHS = " ▏▎▍▌▋▊▉"  # partial blocks, so small differences still show


class ClientError(Exception):
    """Base class of the errors this client raises about the service."""


class ServiceError(ClientError):
    """The service answered with an error: it refused the request (bad photo, too large, ...)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status = status
        self.code = code
        self.message = message


class ServiceUnavailable(ClientError):
    """Nothing answers at the URL, the connection failed, or the service is not ready (HTTP 503)."""

    def __init__(self, url: str, message: str, status: int | None = None, reason: object = None):
        super().__init__(message)
        self.url = url
        self.message = message
        self.status = status
        self.reason = reason


# --- library -----------------------------------------------------------------------------------


def predict(path_or_bytes: ImageInput, url: str = DEFAULT_URL, top_k: int | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> dict:
    """Classify one photo (a path or its bytes). Returns the service's JSON answer:
    {"model": {...}, "predictions": [{"label", "index", "percent"}, ...], "timing_ms": {...}}."""
    part = read_image_part(path_or_bytes)
    body, content_type = encode_multipart([part])
    return post_predict(url, body, content_type, top_k, timeout)


def predict_many(paths_or_bytes: Iterable[ImageInput], url: str = DEFAULT_URL, top_k: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> list[dict]:
    """Classify several photos in one request (one multipart part each). Returns one result per photo,
    in order: [{"filename": ..., "predictions": [...]}, ...]. The whole request fails (ServiceError)
    if the service refuses any of the photos."""
    parts = [read_image_part(item) for item in paths_or_bytes]
    if not parts:
        raise ValueError("predict_many needs at least one photo")
    body, content_type = encode_multipart(parts)
    answer = post_predict(url, body, content_type, top_k, timeout)
    if isinstance(answer.get("results"), list):
        return answer["results"]
    if "predictions" in answer and len(parts) == 1:
        # A one-part request is answered like a single photo: give it the same shape as the others.
        return [{"filename": parts[0][0], "predictions": answer["predictions"]}]
    raise ServiceError(200, "unexpected_answer", f"The service's answer has no 'results' list: {_excerpt(answer)}")


def read_image_part(path_or_bytes: ImageInput) -> tuple[str | None, str, bytes]:
    """(filename, content type, bytes) of one photo. Raises OSError for a path that cannot be read."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, filename = bytes(path_or_bytes), None
    elif isinstance(path_or_bytes, (str, os.PathLike)):
        with open(path_or_bytes, "rb") as file:
            data = file.read()
        filename = os.path.basename(os.fspath(path_or_bytes))
    else:
        raise TypeError(f"expected a path or bytes, not {type(path_or_bytes).__name__}")
    return filename, sniff_content_type(data), data


def sniff_content_type(data: bytes) -> str:
    for magic, content_type in _MAGIC_TYPES:
        if data.startswith(magic):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def encode_multipart(parts: list[tuple[str | None, str, bytes]], field: str = FIELD_NAME) -> tuple[bytes, str]:
    """multipart/form-data body with one `field` part per (filename, content type, bytes)."""
    boundary = f"pocketcnn-{uuid.uuid4().hex}"
    chunks = []
    for index, (filename, content_type, data) in enumerate(parts):
        # Quotes and line breaks would end the header early; browsers percent-encode them the same way.
        name = (filename or f"image-{index + 1}").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n".encode("utf-8")
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def post_predict(url: str, body: bytes, content_type: str, top_k: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> dict:
    """POST an already encoded body to <url>/predict and return the JSON answer, or raise."""
    base = normalize_base_url(url)
    target = base + PREDICT_PATH
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a whole number of at least 1, not {top_k!r}")
        target += "?" + urllib.parse.urlencode({"top_k": top_k})
    # http(s) only: normalize_base_url refused every other scheme
    request = urllib.request.Request(target, data=body, method="POST",  # noqa: S310
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
    return _send(request, base, timeout)


def normalize_base_url(url: str) -> str:
    """'http://host:port' without a trailing slash. Raises ValueError for anything else."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"'{url}' is not a service URL; expected something like {DEFAULT_URL}")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))


def _send(request: urllib.request.Request, base: str, timeout: float) -> dict:
    opener = _opener_for(request.host)
    try:
        with opener.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        try:
            raw = err.read()
        except (OSError, http.client.HTTPException):  # the error status is still worth reporting
            raw = b""
        finally:
            err.close()
        raise _error_from_answer(err.code, raw, base) from None
    except urllib.error.URLError as err:
        raise _unreachable(base, err.reason, timeout) from None
    except (OSError, http.client.HTTPException) as err:
        # Timeouts while reading, resets and half-closed connections are not wrapped by urllib.
        raise _unreachable(base, err, timeout) from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ServiceError(status, "invalid_response",
                           f"The service at {base} answered with something that is not JSON: {_excerpt(raw)}") from None


def _opener_for(host: str) -> urllib.request.OpenerDirector:
    # A proxy from the environment cannot reach this machine's loopback service, so never use one for it.
    hostname = urllib.parse.urlsplit(f"//{host}").hostname or ""
    if hostname in _LOOPBACK_HOSTS or hostname.startswith("127."):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _error_from_answer(status: int, raw: bytes, base: str) -> ClientError:
    """A ServiceError (or ServiceUnavailable for 503) carrying the service's own JSON message."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code, message = str(error.get("code") or "error"), error["message"]
    else:
        # Not the service's error format (a proxy's page, a crash): show what came back.
        code = "http_error"
        message = f"HTTP {status} from {base}" + (f": {_excerpt(raw)}" if raw else "")
    if status == 503:
        reason = document.get("reason") if isinstance(document, dict) else None
        text = f"The service at {base} is not ready (HTTP 503): {message}"
        if reason and str(reason) not in message:
            text += f" (reason: {reason if isinstance(reason, str) else json.dumps(reason)})"
        return ServiceUnavailable(base, text, status=503, reason=reason)
    return ServiceError(status, code, message)


def _unreachable(base: str, reason: object, timeout: float) -> ServiceUnavailable:
    if isinstance(reason, ConnectionRefusedError):
        text = (f"Nothing is answering at {base} (connection refused). Start the service with `make serve`, "
                f"or pass the right address with --url.")
    elif isinstance(reason, (socket.timeout, TimeoutError)):
        text = f"The service at {base} did not answer within {timeout:g} s."
    elif isinstance(reason, socket.gaierror):
        text = f"Cannot resolve the host of {base} ({reason}). Check --url."
    else:
        text = f"Cannot talk to the service at {base}: {reason}. Is it running (`make serve`)?"
    return ServiceUnavailable(base, text, reason=reason)


def _excerpt(value: object, limit: int = 200) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else (
        value if isinstance(value, str) else json.dumps(value))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


# --- command line --------------------------------------------------------------------------------


def bar(percent: float, width: int = BAR_WIDTH) -> str:
    """A bar of block characters, `width` characters long at 100 %, with eighth-block precision."""
    eighths = round(max(0.0, min(100.0, percent)) / 100 * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


NOT_KNOWN = "This doesn't look like anything the model was trained on"


def format_answer(photo: str, answer: dict) -> str:
    """A readable table of one answer: label, percentage and bar, most likely first."""
    model = answer.get("model") or {}
    predictions = sorted(answer.get("predictions") or [], key=lambda p: -float(p["percent"]))
    title = f"{photo}: {model.get('name', '?')} v{model.get('version', '?')} ({model.get('format', '?')})"
    total_ms = (answer.get("timing_ms") or {}).get("total")
    if isinstance(total_ms, (int, float)):
        title += f", {total_ms:.1f} ms"
    width = max((len(str(p["label"])) for p in predictions), default=5)
    lines = [title]
    if answer.get("out_of_distribution"):
        lines.append(f"  {NOT_KNOWN} (score {answer.get('ood_score')}; the percentages are what it would answer)")
    for prediction in predictions:
        percent = float(prediction["percent"])
        lines.append(f"  {str(prediction['label']):<{width}}  {percent:6.2f} %  {bar(percent)}".rstrip())
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clients.predict",
        description="Send photos to a running pocketcnn service and print, for each, the percentage of every "
                    "class, most likely first. Start the service with `make serve`.",
        epilog="Exit status: 0 all photos classified; 1 the service refused a photo (its message is printed); "
               "2 the service is down or not ready, or the arguments are wrong.",
    )
    parser.add_argument("photos", nargs="+", metavar="PHOTO",
                        help="photo files (JPEG, PNG, WebP, GIF, BMP or TIFF), one request each")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the service's base URL (default: {DEFAULT_URL})")
    parser.add_argument("--top-k", type=positive_int, metavar="K",
                        help="only the K most likely classes (default: every class)")
    parser.add_argument("--json", action="store_true",
                        help="print the service's JSON answer instead of a table, one line per photo")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"give up on an answer after this many seconds (default: {DEFAULT_TIMEOUT:g})")
    return parser


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) and argument errors (2): return the code instead of exiting
        return int(exit_.code or 0)
    try:
        base = normalize_base_url(args.url)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parts = {}
    for photo in args.photos:  # read every file first: a typo should not cost the requests before it
        try:
            parts[photo] = read_image_part(photo)
        except OSError as err:
            print(f"error: cannot read {photo}: {err.strerror or err}", file=sys.stderr)
            return 2
    refused = 0
    for index, photo in enumerate(args.photos):
        body, content_type = encode_multipart([parts[photo]])
        try:
            answer = post_predict(base, body, content_type, args.top_k, args.timeout)
        except ServiceUnavailable as err:
            print(f"error: {err.message}", file=sys.stderr)
            return 2
        except ServiceError as err:
            print(f"{photo}: refused by the service (HTTP {err.status}, {err.code}): {err.message}", file=sys.stderr)
            refused += 1
            continue
        if args.json:
            print(json.dumps(answer, ensure_ascii=False))
        else:
            print(("\n" if index else "") + format_answer(photo, answer))
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
