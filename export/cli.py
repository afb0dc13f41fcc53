"""python -m export: turn a run's best.keras into a published, proven model version."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from contract.formats import DEFAULT_FORMATS, FORMATS, UnknownFormat
from contract.options import add_options, values_of
from export.options import ExportOptions

# A release pipeline must tell a failed gate from a crash: Python exits 1 on an uncaught exception, so a
# failed gate has its own code.
EXIT_PUBLISHED, EXIT_CRASHED, EXIT_BAD_INPUT, EXIT_GATE_FAILED = 0, 1, 2, 3

EPILOG = f"""\
formats (--formats, comma-separated; 'all' for every one):
{chr(10).join(f"  {f.key:<20} {f.description}{'  [opt-in: ' + f.opt_in + ']' if f.opt_in else ''}"
              for f in FORMATS.values())}

exit codes:
  0  every file passed every gate; the version was published (its path is the last line printed)
  1  the export crashed (a bug or an environment problem: the traceback says where); nothing was published
  2  bad input: missing or unfinished run, unknown format, unwritable destination, unsafe model
  3  a gate failed: the report says which file missed which gate by how much; nothing was published

examples:
  python -m export runs/latest                       # release defaults: {', '.join(DEFAULT_FORMATS)}
  python -m export runs/latest --qat --prune         # plus quantization-aware and pruned int8
  python -m export runs/latest --formats onnx,tflite_int8 --int8-min-agreement 0.995
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Convert a run's best.keras to SavedModel, TFLite (float32, float16, dynamic range, int8) and "
        "ONNX; run every file through the runtime that will load it on the held-out test images; publish "
        "models/<name>/<version>/ with a manifest only if every file passed its gates.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", type=Path,
                        help="a run folder, or a runs directory / runs/latest (the newest finished run)")
    add_options(parser, ExportOptions)
    parser.add_argument("--report", type=Path, help="also write the results as JSON here (written on failure too)")
    parser.add_argument("--quiet", action="store_true", help="only the table and the result")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    options = ExportOptions(run=args.run, **values_of(args, ExportOptions))
    for problem in options.problems():
        parser.error(problem)
    try:
        options.selected_formats()
    except UnknownFormat as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from export.pipeline import ExportInputError, export_run, write_report  # (TensorFlow: --help stays fast)
    from export.publish import DestinationError

    try:
        result = export_run(options)
    except (ExportInputError, DestinationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(result.table)
    if args.report:
        write_report(args.report, result)
    if not result.passed:
        failed = [v for v in result.verdicts if v.status != "passed"]
        print(f"\nEXPORT FAILED: {len(failed)} of {len(result.verdicts)} files missed a gate; nothing was published.",
              file=sys.stderr)
        for verdict in failed:
            for failure in verdict.failures:
                print(f"  {verdict.key}: {failure}", file=sys.stderr)
        return EXIT_GATE_FAILED
    print(f"\nPublished {result.published}")
    return EXIT_PUBLISHED
