"""Callbacks that survive a killed run.

Keras' BackupAndRestore brings back the weights, the optimizer (learning rate included) and the
epoch counter. What it does not bring back is the state of the other callbacks: the best value
seen so far (ModelCheckpoint, EarlyStopping, ReduceLROnPlateau reset it in on_train_begin) and the
history. `ResumeState` is computed from the saved history and handed to the subclasses below, so
that a resumed run behaves like one that was never interrupted.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from contract.files import atomic_write_bytes


@dataclass
class ResumeState:
    initial_epoch: int = 0
    best: float | None = None       # best monitored value in the finished epochs
    best_epoch: int = -1            # 0-based
    history: list[dict] | None = None

    @classmethod
    def from_history(cls, history: list[dict], initial_epoch: int, monitor: str) -> "ResumeState":
        kept = [row for row in history if row["epoch"] < initial_epoch]
        values = [(row[monitor], row["epoch"]) for row in kept if monitor in row]
        if not values:
            return cls(initial_epoch, None, -1, kept)
        pick = max if is_higher_better(monitor) else min
        best, best_epoch = pick(values, key=lambda v: v[0])
        return cls(initial_epoch, best, best_epoch, kept)


def is_higher_better(monitor: str) -> bool:
    return "acc" in monitor or "auc" in monitor


class AtomicBestCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint(save_best_only) that writes beside the file and renames: never half a model."""

    def __init__(self, filepath: Path, monitor: str, resume: ResumeState):
        super().__init__(
            str(filepath), monitor=monitor, mode="max" if is_higher_better(monitor) else "min",
            save_best_only=True, initial_value_threshold=resume.best,
        )
        self.final_path = Path(filepath)

    def _save_model(self, epoch, batch, logs):
        final = self.filepath
        partial = self.final_path.with_name(f".{self.final_path.name}.partial.keras")
        self.filepath = str(partial)
        try:
            super()._save_model(epoch, batch, logs)
        finally:
            self.filepath = final
        if partial.exists():
            partial.replace(self.final_path)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that, after a resume, remembers the best epoch and how long ago it was."""

    def __init__(self, monitor: str, patience: int, resume: ResumeState, best_model_path: Path):
        super().__init__(monitor=monitor, mode="max" if is_higher_better(monitor) else "min",
                         patience=patience, restore_best_weights=True, verbose=1)
        self.resume = resume
        self.best_model_path = best_model_path

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume.best is not None:
            self.best = self.resume.best
            self.best_epoch = self.resume.best_epoch
            self.wait = self.resume.initial_epoch - 1 - self.resume.best_epoch
            if self.best_model_path.is_file():
                best = keras.models.load_model(self.best_model_path, compile=False, safe_mode=True)
                self.best_weights = best.get_weights()


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    def __init__(self, monitor: str, factor: float, patience: int, min_lr: float, resume: ResumeState):
        super().__init__(monitor=monitor, mode="max" if is_higher_better(monitor) else "min",
                         factor=factor, patience=patience, min_lr=min_lr, verbose=1)
        self.resume = resume

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume.best is not None:
            self.best = self.resume.best
            self.wait = self.resume.initial_epoch - 1 - self.resume.best_epoch


class RunHistory(keras.callbacks.Callback):
    """Per-epoch metrics (plus learning rate and seconds), rewritten atomically as CSV and JSON.

    Rewriting the whole file from the in-memory list, rather than appending, means a run killed at
    any moment leaves each finished epoch exactly once; a resume drops epochs the backup did not keep.
    """

    def __init__(self, csv_path: Path, json_path: Path, resume: ResumeState):
        super().__init__()
        self.csv_path, self.json_path = csv_path, json_path
        self.rows: list[dict] = list(resume.history or [])
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.monotonic() - self._started, 3)
        self.rows.append(row)
        self.write()

    def write(self):
        atomic_write_bytes(self.json_path, (json.dumps(self.rows, indent=1) + "\n").encode())
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.csv_path, text.getvalue().encode())


class TimeBudget(keras.callbacks.Callback):
    """Stop before an epoch that would end after `minutes` of training (0 = no limit)."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = minutes * 60
        self.started = 0.0
        self.epoch_times: list[float] = []
        self._epoch_start = 0.0

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if self.seconds <= 0:
            return
        self.epoch_times.append(time.monotonic() - self._epoch_start)
        elapsed = time.monotonic() - self.started
        if elapsed + float(np.median(self.epoch_times)) > self.seconds:
            print(f"\nTime budget: {elapsed / 60:.1f} of {self.seconds / 60:g} minutes used; "
                  "another epoch would overrun it. Stopping.")
            self.model.stop_training = True


class AgreedDecisions(keras.callbacks.Callback):
    """Across workers: after every other callback has had its say at the end of an epoch, the chief's
    decisions (stop training? the learning rate for the next epoch) replace every worker's own.

    Early stopping and learning-rate reduction read validation metrics that are summed over every worker, so
    they agree already; the time budget reads each worker's own clock, and would not. Taking every decision
    from the chief means no worker is ever left waiting in a collective that its peers have stopped joining.
    Put it last in the callback list; it does nothing on a single worker."""

    def __init__(self, cluster, adjustable_rate: bool):
        super().__init__()
        self.cluster = cluster
        self.adjustable_rate = adjustable_rate  # False: the rate comes from a schedule, nothing to agree on

    def on_epoch_end(self, epoch, logs=None):
        if not self.cluster.multi_worker:
            return
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)) if self.adjustable_rate else 0.0
        (stop, agreed_rate), _ = self.cluster.agree([float(bool(self.model.stop_training)), rate])
        self.model.stop_training = stop > 0
        if self.adjustable_rate and agreed_rate != rate:
            self.model.optimizer.learning_rate = agreed_rate


class SharedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that restores from one folder and writes to another: every worker restores the chief's
    backup (in the run folder, on storage every worker sees), and only the chief writes there; the others
    write to their scratch folders."""

    def __init__(self, restore_dir: Path, write_dir: Path):
        super().__init__(str(write_dir), save_freq="epoch", delete_checkpoint=True)
        self.restore_dir = Path(restore_dir)

    def on_train_begin(self, logs=None):
        written = (self._weights_path, self._training_metadata_path)
        self._weights_path = str(self.restore_dir / Path(written[0]).name)
        self._training_metadata_path = str(self.restore_dir / Path(written[1]).name)
        try:
            super().on_train_begin(logs)
        finally:
            self._weights_path, self._training_metadata_path = written


def read_backup_epoch(backup_dir: Path) -> int:
    """The number of finished epochs BackupAndRestore recorded (0 if none)."""
    metadata = backup_dir / "training_metadata.json"
    if not metadata.is_file():
        return 0
    try:
        value = json.loads(metadata.read_text()).get("epoch", 0)
    except (OSError, json.JSONDecodeError):
        return 0
    return int(value) if isinstance(value, int) and not math.isnan(value) else 0
