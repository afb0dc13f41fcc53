"""The request-body policy: a body over the limit is answered 413 before anything reads it whole.

The body is read away first, up to a bound: a server that closes with the upload unread makes browsers and
most HTTP libraries report a connection reset instead of the 413 and its message. A chunked upload states
no length, and Werkzeug silently cuts it at the limit (the image would then be "damaged", or worse, decode
from its first 16 MB): it is buffered up to one byte over the limit, and refused beyond.
"""

from __future__ import annotations

import io

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

DRAIN_LIMIT_FACTOR = 4  # bodies up to 4x the limit are read away before the 413; larger ones are cut off


def install(app: Flask, limit: int) -> None:
    @app.before_request
    def refuse_oversized_body():
        environ = request.environ
        length = request.content_length
        stream = environ.get("wsgi.input")
        if length is None and stream is not None and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            body = stream.read(limit + 1)
            if len(body) <= limit:
                environ["wsgi.input"] = io.BytesIO(body)
                return None
            length = limit + 1
        if length is not None and length > limit:
            remaining = min(length, DRAIN_LIMIT_FACTOR * limit)
            while stream is not None and remaining > 0:
                chunk = stream.read(min(65536, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
            raise RequestEntityTooLarge()
        return None
