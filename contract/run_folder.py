"""The run folder: what train leaves behind and export reads.

    runs/<run-id>/
        best.keras          best checkpoint by the monitored validation metric
        config.json         every hyper-parameter of the run
        labels.txt          one class name per line, in output order
        history.csv/.json   per-epoch metrics
        metrics.json        held-out test accuracy/loss of best.keras, per-class precision/recall,
                            confusion matrix, best epoch
        arrays/test.npz     the held-out test images (x: uint8 NHWC, y: int) as decode_image made them
                            (at most 10 000: a seeded sample of a bigger test split)
        arrays/validation.npz  the validation split (at most 10 000 images): export's calibration
        arrays/train_sample.npz  a seeded sample of training images, for calibration and fine-tuning
                            (--train-sample-size): none of the three grows with the data set
        plots/*.png         curves, confusion matrix, filters, feature maps
        backup/             BackupAndRestore state while a run is unfinished
    runs/latest -> <run-id> the newest finished run
"""

from __future__ import annotations

import json
from pathlib import Path

BEST_MODEL = "best.keras"
CONFIG = "config.json"
LABELS = "labels.txt"
METRICS = "metrics.json"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
TEST_ARRAYS = "arrays/test.npz"
TRAIN_SAMPLE_ARRAYS = "arrays/train_sample.npz"
VALIDATION_ARRAYS = "arrays/validation.npz"
MAX_VALIDATION_ARRAYS = 10_000
MAX_TEST_ARRAYS = 10_000
PLOTS = "plots"
BACKUP = "backup"
LATEST_LINK = "latest"


class RunFolderError(ValueError):
    """A run folder is missing or incomplete."""


def write_labels(path: Path, labels: list[str]) -> None:
    path.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")


def read_labels(path: Path) -> list[str]:
    return [line.rstrip("\r") for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def resolve_run(path: str | Path) -> Path:
    """A finished run folder, given its path, a runs directory (newest run) or runs/latest."""
    path = Path(path)
    if not path.exists():
        raise RunFolderError(f"No run folder at {path}. Train one first: make train (or python -m train).")
    if (path / METRICS).is_file():
        return path.resolve()
    if (path / LATEST_LINK).exists():
        return resolve_run(path / LATEST_LINK)
    finished = sorted(
        (p for p in path.iterdir() if p.is_dir() and (p / METRICS).is_file()),
        key=lambda p: (p / METRICS).stat().st_mtime,
    )
    if finished:
        return finished[-1].resolve()
    if (path / CONFIG).is_file():
        raise RunFolderError(
            f"{path} is a run that has not finished (no {METRICS}). "
            f"Resume it with: python -m train --resume {path}"
        )
    raise RunFolderError(f"{path} holds no finished training run.")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
