"""Options declared once, as dataclass fields, and turned into command-line flags.

A field made with `option(default, help, ...)` becomes `--field-name` with that default and help, so
`--help`, the defaults in code and the values saved in a run folder cannot disagree. Types follow the
default: bool -> true/false (or a plain flag with flag=True), tuple of ints -> "32,64,128", else the
default's own type.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, field, fields


def option(default, help: str, **extra) -> Field:  # noqa: A002 - "help" as argparse calls it
    """A dataclass field with its command-line help. extra: choices=..., group="...", flag=True
    (a bool that is switched on by its bare flag, like --qat), metavar=..."""
    return field(default=default, metadata={"help": help, **extra})


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def parse_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 32,64,128, not {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("expected positive integers like 32,64,128")
    return values


def show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return repr(value) if value == "" else str(value)


def add_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the dataclass `cls` that has help metadata (fields in `skip` are left out)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        default = f.default if f.default is not MISSING else None
        target = parser
        if "group" in f.metadata:
            title = f.metadata["group"]
            target = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %: "93 %" is a percentage
        kwargs = {"default": default, "dest": f.name, "help": f"{text} (default: {show(default)})"}
        if f.metadata.get("flag"):
            target.add_argument(flag, action="store_true", dest=f.name, help=text)
            continue
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if "metavar" in f.metadata:
            kwargs["metavar"] = f.metadata["metavar"]
        if isinstance(default, bool):
            kwargs.update(type=parse_bool, metavar="BOOL")
        elif isinstance(default, tuple):
            kwargs.update(type=parse_ints, metavar="N,N,...")
        else:
            kwargs["type"] = type(default)
        target.add_argument(flag, **kwargs)


def values_of(args: argparse.Namespace, cls, skip: tuple[str, ...] = ()) -> dict:
    """The parsed value of every field of `cls` that has a flag."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if f.name not in skip and "help" in f.metadata}
