"""python -m export: turn a run's best.keras into a published, proven model version."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from export.formats import DEFAULT_FORMATS, FORMATS, Gates, UnknownFormat, parse_formats

EXIT_PUBLISHED, EXIT_GATE_FAILED, EXIT_BAD_INPUT = 0, 1, 2

EPILOG = f"""\
formats (--formats, comma-separated; 'all' for every one):
{chr(10).join(f"  {f.key:<20} {f.description}{'  [opt-in: ' + f.opt_in + ']' if f.opt_in else ''}" for f in FORMATS.values())}

exit codes:
  0  every file passed every gate; the version was published (its path is the last line printed)
  1  a gate failed (or a converter crashed): the report says which file, which gate, by how much;
     nothing was published
  2  bad input: missing or unfinished run, unknown format, unwritable destination, unsafe model

examples:
  python -m export runs/latest                       # release defaults: {', '.join(DEFAULT_FORMATS)}
  python -m export runs/latest --qat --prune         # plus quantization-aware and pruned int8
  python -m export runs/latest --formats onnx,tflite_int8 --int8-min-agreement 0.995
"""


def build_parser() -> argparse.ArgumentParser:
    from export.pipeline import ExportOptions  # (no TensorFlow at import: --help stays fast)

    defaults = Gates()
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Convert a run's best.keras to SavedModel, TFLite (float32, float16, dynamic range, int8) and "
        "ONNX; run every file through the runtime that will load it on the held-out test images; publish "
        "models/<name>/<version>/ with a manifest only if every file passed its gates.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", help="a run folder, or a runs directory / runs/latest (the newest finished run)")
    parser.add_argument("--models-dir", default="models", help="model repository to publish into (default: models)")
    parser.add_argument("--name", default="", help="model name (default: the run's dataset, e.g. fashion_mnist)")
    parser.add_argument("--formats", default="", help="formats to export (default: the release set above)")
    parser.add_argument("--qat", action="store_true", help="add quantization-aware-trained int8 (tfmot, separate process)")
    parser.add_argument("--prune", action="store_true", help="add magnitude-pruned int8 (tfmot, separate process)")
    parser.add_argument("--calibration-images", type=int, default=300, help="training images for int8 calibration (default: 300)")
    parser.add_argument("--test-limit", type=int, default=0, help="check on only the first N held-out images (default: all)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    tfmot = ExportOptions.__dataclass_fields__
    parser.add_argument("--qat-epochs", type=int, default=tfmot["qat_epochs"].default,
                        help="QAT fine-tune epochs on the run's training sample (default: %(default)s)")
    parser.add_argument("--qat-learning-rate", type=float, default=tfmot["qat_learning_rate"].default,
                        help="QAT fine-tune learning rate (default: %(default)s)")
    parser.add_argument("--prune-epochs", type=int, default=tfmot["prune_epochs"].default,
                        help="pruning fine-tune epochs (default: %(default)s)")
    parser.add_argument("--prune-learning-rate", type=float, default=tfmot["prune_learning_rate"].default,
                        help="pruning fine-tune learning rate (default: %(default)s)")
    parser.add_argument("--prune-sparsity", type=float, default=tfmot["prune_sparsity"].default,
                        help="share of conv/dense weights set to zero (default: %(default)s)")
    gates = parser.add_argument_group("gates (a file that misses one fails the export)")
    gates.add_argument("--float-min-agreement", type=float, default=defaults.float_min_agreement,
                       help=f"top-1 agreement with the Keras model, float formats (default: {defaults.float_min_agreement})")
    gates.add_argument("--float32-max-diff", type=float, default=defaults.float32_max_diff,
                       help=f"max |probability difference|, float32 formats (default: {defaults.float32_max_diff})")
    gates.add_argument("--float16-max-diff", type=float, default=defaults.float16_max_diff,
                       help=f"max |probability difference|, float16 (default: {defaults.float16_max_diff})")
    gates.add_argument("--int8-min-agreement", type=float, default=defaults.int8_min_agreement,
                       help=f"top-1 agreement with the source model, int8 formats (default: {defaults.int8_min_agreement})")
    gates.add_argument("--int8-max-accuracy-drop", type=float, default=defaults.int8_max_accuracy_drop,
                       help=f"accuracy points an int8 file may lose (default: {defaults.int8_max_accuracy_drop})")
    parser.add_argument("--report", type=Path, help="also write the results as JSON here (written on failure too)")
    parser.add_argument("--quiet", action="store_true", help="only the table and the result")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        formats = parse_formats(args.formats, qat=args.qat, prune=args.prune)
    except UnknownFormat as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.calibration_images < 1:
        parser.error("--calibration-images must be at least 1")
    if not 0 < args.prune_sparsity < 1:
        parser.error("--prune-sparsity must be between 0 and 1")

    from export.pipeline import ExportInputError, ExportOptions, export_run, write_report
    from export.publish import DestinationError

    options = ExportOptions(
        run=Path(args.run), models_dir=Path(args.models_dir), name=args.name, formats=formats,
        gates=Gates(args.float_min_agreement, args.float32_max_diff, args.float16_max_diff,
                    args.int8_min_agreement, args.int8_max_accuracy_drop),
        calibration_images=args.calibration_images, opset=args.opset, test_limit=args.test_limit,
        qat_epochs=args.qat_epochs, qat_learning_rate=args.qat_learning_rate, prune_epochs=args.prune_epochs,
        prune_learning_rate=args.prune_learning_rate, prune_sparsity=args.prune_sparsity,
    )
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
