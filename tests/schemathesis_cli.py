"""schemathesis' command line (`st`), with one workaround.

Python 3.11.7's ast.parse can raise SystemError ("AST constructor recursion depth mismatch") when it is called
deep in a stack, as hypothesis does to name a lambda in a strategy's repr while generating a request body; hypothesis
expects a SyntaxError there (it then names the lambda "<unknown>"). Measured here with the OpenAPI document's V2
inference body: the run stops with a "Runtime Error" before any request is sent. The SystemError is turned into the
SyntaxError hypothesis handles; nothing else changes.

    python tests/schemathesis_cli.py run http://127.0.0.1:8000/openapi.json ...   # as `st run ...`
"""

from __future__ import annotations

import ast
import sys

_parse = ast.parse


def _parse_or_syntax_error(*args, **kwargs):
    try:
        return _parse(*args, **kwargs)
    except SystemError as err:
        raise SyntaxError(str(err)) from None


ast.parse = _parse_or_syntax_error

if __name__ == "__main__":
    from schemathesis.cli import schemathesis

    sys.exit(schemathesis())
