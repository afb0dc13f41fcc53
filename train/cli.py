"""python -m train: train a CNN and leave a run folder (see contract/run_folder.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from contract import run_folder as rf
from contract.files import storage_error
from contract.options import add_options, values_of
from train.config import TrainConfig

EPILOG = """\
examples:
  python -m train                                   # the benchmark recipe on Fashion-MNIST
  python -m train --recipe quick                    # the same for 5 epochs: what `make run` trains first
  python -m train --dataset folder --data-dir photos/ --image-size 96 --epochs 30
  python -m train --resume runs/20261122-120000-fashion_mnist   # continue a killed run
  TF_CONFIG='{"cluster": {"worker": ["host-a:2222", "host-b:2222"]}, "task": {"type": "worker", "index": 0}}' \
      python -m train --strategy multi-worker --runs-dir /shared/runs --run-name mw   # on each host, its own index

exit status: 0 trained (or resumed to the end), 2 bad data, options or run folder, 3 another worker of a
multi-worker run stopped (start every worker again with --resume <run folder>).

The run folder (runs/<run-id>/, newest also at runs/latest) holds best.keras, config.json, labels.txt,
history.csv/json, metrics.json, arrays/ (held-out test images for export) and plots/.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train", description="Train a CNN image classifier with dropout, batch norm and "
        "checkpoints; write a run folder with the best model, its history, metrics and plots.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an unfinished run from its last finished "
                        "epoch, with the run's own config (other options are ignored)")
    parser.add_argument("--write-arrays", metavar="RUN_DIR", help="write a run's arrays/ (test, validation, "
                        "training sample) again from its config, e.g. for a run made before export needed "
                        "arrays/validation.npz; nothing is trained")
    add_options(parser, TrainConfig)
    return parser


def check(config: TrainConfig, parser: argparse.ArgumentParser) -> None:
    if config.epochs < 1:
        parser.error("--epochs must be at least 1")
    if config.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if not 0 < config.validation_fraction < 0.5:
        parser.error("--validation-fraction must be between 0 and 0.5")
    if config.learning_rate <= 0:
        parser.error("--learning-rate must be positive")
    for name in ("conv_dropout", "dense_dropout"):
        if not 0 <= getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1)")
    if config.image_size < 0:
        parser.error("--image-size must be positive (or 0 for the dataset's own)")
    for name in ("monitor", "reduce_lr_monitor"):
        if getattr(config, name) not in ("val_accuracy", "val_loss"):
            parser.error(f"--{name.replace('_', '-')} must be val_accuracy or val_loss")
    if config.base_weights and not Path(config.base_weights).is_file():
        parser.error(f"--base-weights: no file at {config.base_weights}")


def _multi_worker(args: argparse.Namespace) -> bool:
    """Whether this run trains with --strategy multi-worker (given, or recorded in the run folder being resumed)."""
    if getattr(args, "strategy", None) == "multi-worker":
        return True
    if args.resume:
        try:
            return json.loads((Path(args.resume) / rf.CONFIG).read_text()).get("strategy") == "multi-worker"
        except (OSError, ValueError, AttributeError):
            return False
    return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the way
    # TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX512-VNNI, BF16 or AMX; on AVX2 they cut
    # the CPU time of a training step by a third (BENCHMARKS.md). Before TensorFlow loads (the Makefile sets it too,
    # for processes that load TensorFlow before this).
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if _multi_worker(args) and os.environ["TF_ENABLE_ONEDNN_OPTS"] != "0":
        # Measured with TensorFlow 2.21: a oneDNN convolution fails on an empty batch ("Incompatible shapes"), and
        # MultiWorkerMirroredStrategy hands a worker empty batches when the shards are uneven (a streamed folder).
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
        logging.info("Multi-worker training runs with TensorFlow's oneDNN kernels off (they fail on the empty "
                     "batches of uneven shards)")

    from train.cluster import PEER_LOST_EXIT, PeerLost
    from train.data import DataError
    from train.model import ModelConfigError
    from train.run import RunError, load_run_config, train  # noqa: I001 - TensorFlow loads here, after the parse

    try:
        if args.write_arrays:
            from train.run import rewrite_arrays

            rewrite_arrays(Path(args.write_arrays))
        elif args.resume:
            run_dir = Path(args.resume)
            config = load_run_config(run_dir)
            train(config, run_dir=run_dir)
        else:
            config = TrainConfig(**values_of(args, TrainConfig))
            check(config, parser)
            train(config)
    except (DataError, ModelConfigError, RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PeerLost as err:
        print(f"error: {err}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # At once: TensorFlow's own shutdown would wait for the lost worker at its coordination service's barrier.
        os._exit(PEER_LOST_EXIT)
    except Exception as err:  # noqa: BLE001 - only storage failures are turned into a message; others re-raise
        reason = storage_error(err)
        if reason is None:
            raise
        where = args.resume or args.runs_dir
        print(f"error: cannot write the run folder under {where}: {reason}. Free some space, then train again, or "
              "continue a run that finished epochs with: python -m train --resume <run folder>", file=sys.stderr)
        return 2
    return 0
