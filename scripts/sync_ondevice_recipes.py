"""Copy contract/recipes.py's arithmetic (its constants, and everything from `def grey(` on) into
clients/ondevice.py, the standalone copy an app takes, between the markers. Run after changing a recipe:

    .venv/bin/python scripts/sync_ondevice_recipes.py          # rewrite the copy
    .venv/bin/python scripts/sync_ondevice_recipes.py --check  # exit 1 if the copy is stale (the tests run this)

The web page's JavaScript port (serve/static/recipes.mjs) is written by hand; tests/test_web_page.py checks
it byte for byte against contract/.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "contract" / "recipes.py"
COPY = ROOT / "clients" / "ondevice.py"
START = "# --- the input recipes: a copy of contract/recipes.py (an app has no contract package) ---------------\n"
END = "# --- the model -------------------------------------------------------------------------------------\n"


def synced() -> str:
    source, copy = SOURCE.read_text(), COPY.read_text()
    constants = source[source.index("REDUCING_GAP = "):source.index("\n\n\ndef recipe_for")].strip()
    code = source[source.index("def grey(pixels"):].rstrip()
    return copy[:copy.index(START)] + START + "\n" + constants + "\n\n\n" + code + "\n\n\n" + copy[copy.index(END):]


def main(argv: list[str]) -> int:
    text = synced()
    if "--check" in argv:
        if text != COPY.read_text():
            print(f"{COPY.relative_to(ROOT)} is stale: run {Path(__file__).relative_to(ROOT)}", file=sys.stderr)
            return 1
        return 0
    COPY.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
