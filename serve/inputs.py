"""Turning an HTTP request into image bytes (and top_k), with the right error for everything else."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from flask import Request

from serve.multipart import MultipartError, boundary_of, parse_multipart

RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
_STANDARD_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_URLSAFE_B64 = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class ApiError(Exception):
    """An error the client can act on, answered as {"error": {"code", "message"}} with `status`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Upload:
    data: bytes
    filename: str | None = None


def read_uploads(request: Request, max_images: int) -> tuple[list[Upload], bool, object]:
    """The images in a /predict request, whether it asked for a batch answer, and its raw top_k.

    Accepted: multipart field 'image' (repeatable); a raw body with Content-Type image/* or
    application/octet-stream; JSON {"image": "<base64>"} or {"images": ["<base64>", ...]}."""
    # Werkzeug's request.mimetype and request.args parse with regular expressions on every request; the
    # media type is what comes before the first ';', and most requests have no query string at all.
    mimetype = request.environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    top_k = request.args.get("top_k") if request.environ.get("QUERY_STRING") else None
    if mimetype == "multipart/form-data":
        try:
            form = parse_multipart(request.get_data(cache=False), boundary_of(request.content_type or ""))
        except MultipartError as err:
            raise ApiError(400, "invalid_multipart", f"The multipart body cannot be read ({err}). Send the photo as "
                                                     "-F image=@photo.jpg.") from None
        files = form.file_list("image")
        if not files:
            if form.first_field("image") is not None:
                raise ApiError(400, "missing_image", "The field 'image' was sent as text, not as a file. Send the "
                                                     "photo as a file: -F image=@photo.jpg.")
            others = ", ".join(sorted(form.files)) or "none"
            raise ApiError(400, "missing_image", "No file in the multipart field 'image' "
                                                 f"(file fields sent: {others}). "
                                                 "Send the photo as -F image=@photo.jpg.")
        uploads = [Upload(f.data, f.filename or None) for f in files]
        top_k = _one_top_k(top_k, form.first_field("top_k", _ABSENT), "form")
        batch = len(uploads) > 1
    elif mimetype.startswith(RAW_IMAGE_TYPES):
        uploads, batch = [Upload(request.get_data(cache=False))], False
    elif mimetype == "application/json":
        body = json_body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", 'The body is not a JSON object. Send {"image": "<base64>"} or '
                                                '{"images": ["<base64>", ...]}.')
        if "image" in body and "images" not in body:
            uploads, batch = [Upload(decode_base64(body["image"], "image"))], False
        elif "images" in body and "image" not in body:
            items = body["images"]
            if not isinstance(items, list) or not items:
                raise ApiError(400, "invalid_json", "'images' must be a non-empty list of base64 strings.")
            _check_count(len(items), max_images)
            uploads, batch = [Upload(decode_base64(v, f"images[{i}]")) for i, v in enumerate(items)], True
        else:
            raise ApiError(400, "missing_image", 'The JSON needs exactly one of "image" (a base64 string) or '
                                                 '"images" (a list of them).')
        top_k = _one_top_k(top_k, body.get("top_k", _ABSENT), "JSON body")
    elif not mimetype and not request.content_length:
        raise ApiError(400, "missing_image", "No image in the request. Send multipart field 'image', a raw image "
                                             "body with Content-Type image/jpeg (or png...), or JSON "
                                             '{"image": "<base64>"}.')
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type '{mimetype or 'none'}' is not accepted. Use multipart/form-data (field 'image'), "
                       "image/* (the raw photo) or application/json.")
    _check_count(len(uploads), max_images)
    for index, upload in enumerate(uploads):
        if not upload.data:
            where = (f" ({upload.filename})" if upload.filename
                     else ("" if len(uploads) == 1 else f" (image {index + 1})"))
            raise ApiError(400, "empty_image", f"The image{where} is empty (0 bytes).")
    return uploads, batch, top_k


def json_body(request: Request):
    """The request's parsed JSON, or None if it is not valid JSON. JSON nested deeper than Python's
    recursion limit counts as invalid too: json.loads raises RecursionError for it, not ValueError,
    which Flask's silent=True would let through as a 500."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        return None


_ABSENT = object()


def _one_top_k(query, body, where: str):
    """top_k may come in the query or in the body. Given in both, the two must agree: otherwise one of
    them (perhaps an invalid one) would be silently ignored."""
    if body is _ABSENT:
        return query
    if query is not None and str(query) != str(body):
        raise ApiError(400, "invalid_top_k", f"top_k is given twice, {query!r} in the query and {body!r} in the "
                                             f"{where}; send it once.")
    return body


def _check_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise ApiError(413, "too_many_images", f"{count} images in one request; the limit is {max_images}. "
                                               "Split them over several requests.")


def decode_base64(value, where: str) -> bytes:
    if isinstance(value, dict) and isinstance(value.get("b64"), str):  # TF Serving's {"b64": ...}
        value = value["b64"]
    if not isinstance(value, str):
        raise ApiError(400, "invalid_base64", f"'{where}' must be a base64 string.")
    text = value.strip()
    if text.startswith("data:") and "," in text:  # a data URL from a browser's FileReader
        text = text.split(",", 1)[1]
    try:  # the common case, well-formed standard base64, checked in C: a 640x480 JPEG's 58 kB in 0.16 ms instead
        return binascii.a2b_base64(text, strict_mode=True)  # of 0.4 ms through the normalising path below
    except ValueError:  # binascii.Error, or a character beyond ASCII
        pass
    text = "".join(text.split())  # MIME-style line breaks
    text += "=" * (-len(text) % 4)
    try:
        if _STANDARD_B64.fullmatch(text):
            return base64.b64decode(text, validate=True)
        if _URLSAFE_B64.fullmatch(text):
            return base64.urlsafe_b64decode(text)
    except (binascii.Error, ValueError):
        pass
    raise ApiError(400, "invalid_base64", f"'{where}' is not valid base64.")


def parse_top_k(value, classes: int) -> int | None:
    """None (absent, or JSON null) means every class. Anything else must be a whole number from 1 to
    `classes`, as the OpenAPI document says: an empty value is a mistake worth a 400, not "all"."""
    if value is None:
        return None
    if isinstance(value, bool):
        value = "invalid"
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None or not 1 <= number <= classes:
        raise ApiError(400, "invalid_top_k", f"top_k must be a whole number from 1 to {classes}, not {value!r}.")
    return number
