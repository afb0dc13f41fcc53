"""JSON answers, and the sentence form every error message takes."""

from __future__ import annotations

import json

from flask import Response


def json_response(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


def sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."
