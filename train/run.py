"""One training run: data -> model -> fit with callbacks -> evaluate best.keras -> run folder."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, fields, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from contract import run_folder as rf
from contract.files import atomic_write_json
from train.config import QUICK_EPOCHS, TrainConfig, resolved_input_recipe
from train.data import Dataset, load_dataset

log = logging.getLogger(__name__)


class RunError(ValueError):
    """The run folder cannot be created or resumed."""


def new_run_dir(config: TrainConfig) -> Path:
    name = config.run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{config.dataset}"
    path = Path(config.runs_dir) / name
    if (path / rf.METRICS).exists():
        raise RunError(f"{path} already holds a finished run; choose another --run-name.")
    if (path / rf.CONFIG).exists():
        raise RunError(f"{path} holds an unfinished run; continue it with: python -m train --resume {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"Cannot create the run folder {path}: {err.strerror}") from None
    return path


def load_run_config(run_dir: Path, finished_is_ok: bool = False) -> TrainConfig:
    """The config of an unfinished run, for --resume (or of any run, with finished_is_ok)."""
    if not (run_dir / rf.CONFIG).is_file():
        raise RunError(f"{run_dir} is not a run folder (no {rf.CONFIG}).")
    if (run_dir / rf.METRICS).is_file() and not finished_is_ok:
        raise RunError(f"{run_dir} has already finished (it has {rf.METRICS}); nothing to resume.")
    saved = rf.read_json(run_dir / rf.CONFIG)
    known = {f.name for f in fields(TrainConfig)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items() if k in known}
    return TrainConfig(**values)


def train(config: TrainConfig, run_dir: Path | None = None, extra_callbacks=()) -> Path | None:
    """Train according to `config`; with `run_dir` of an unfinished run, continue it. Returns the run folder
    (on a worker that is not the chief of a multi-worker cluster: the run folder if known, else None)."""
    import keras

    from train.cluster import is_peer_failure, lost_peer, make_cluster

    resuming = run_dir is not None
    config = replace(config, input_recipe=resolved_input_recipe(config.dataset, config.input_recipe))
    if config.recipe == "quick":
        config = replace(config, epochs=QUICK_EPOCHS)
    dataset = load_dataset(config)  # data errors surface before any folder is made
    log.info(dataset.summary())
    cluster = make_cluster(config.strategy)  # before any other TensorFlow operation; waits for every worker
    if cluster.multi_worker:
        log.info("Training as %s", cluster.describe())
    run_dir = Path(run_dir) if resuming else None
    try:
        run_dir = prepare_run_folder(config, run_dir, dataset, cluster)
        if run_dir is not None:
            log.info("Run folder: %s", run_dir)

        keras.utils.set_random_seed(config.seed)
        policy = compute_policy(config.precision)
        log.info("Compute precision: %s", policy)
        previous_policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(policy)
        try:
            return _fit_and_finish(config, dataset, run_dir, resuming, extra_callbacks, cluster)
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)  # a process-wide setting: leave it as found
    except Exception as err:
        if cluster.multi_worker and is_peer_failure(err):
            raise lost_peer(err, cluster, run_dir) from None
        raise


def prepare_run_folder(config: TrainConfig, run_dir: Path | None, dataset: Dataset, cluster) -> Path | None:
    """The chief creates the run folder (or reopens the one being resumed) and writes what is known before
    training: config, labels, arrays. The other workers write nothing there; they learn whether the chief
    could start, so that a refusal stops every worker rather than leaving them waiting for it."""
    failure = None
    if cluster.chief:
        try:
            if run_dir is None:
                run_dir = new_run_dir(config)
                atomic_write_json(run_dir / rf.CONFIG, asdict(config))
            rf.write_labels(run_dir / rf.LABELS, dataset.labels)
            save_arrays(run_dir, dataset, config)
        except Exception as err:  # noqa: BLE001 - re-raised below, once every worker knows
            failure = err
    _, every_worker_ready = cluster.agree([], ok=failure is None)
    if failure is not None:
        raise failure
    if not every_worker_ready:
        raise RunError(f"{cluster.describe()}: the chief could not start the run (its output says why); stopping.")
    return run_dir


def _fit_and_finish(config: TrainConfig, dataset: Dataset, run_dir: Path | None, resuming: bool, extra_callbacks,
                    cluster=None) -> Path | None:
    from train.cluster import Cluster, ScratchFolder

    cluster = cluster or Cluster(None)
    scratch = None if cluster.chief else ScratchFolder(cluster)
    try:
        seconds = _fit(config, dataset, run_dir, resuming, extra_callbacks, cluster,
                       run_dir if cluster.chief else scratch.path)
        failure = None
        if cluster.chief:
            try:
                finish_run(run_dir, dataset, config, seconds)
            except Exception as err:  # noqa: BLE001 - re-raised below, once every worker knows
                failure = err
        _, finished = cluster.agree([], ok=failure is None)  # the others wait for the chief's run folder
        if failure is not None:
            raise failure
        if not finished:
            raise RunError(f"{cluster.describe()}: the chief could not finish the run (its output says why).")
        if not cluster.chief:
            print(f"Training finished ({cluster.describe()}); the chief wrote the run folder.")
        return run_dir
    finally:
        if scratch is not None:
            scratch.remove()


def _fit(config: TrainConfig, dataset: Dataset, run_dir: Path | None, resuming: bool, extra_callbacks, cluster,
         write_dir: Path) -> float:
    """model.fit with the run's callbacks; returns the seconds it took. Everything is read from the run folder
    (resuming), and written to `write_dir`: the run folder on the chief, a scratch folder on the others."""
    import keras

    from train import callbacks as cb
    from train.model import compile_model, make_model

    strategy = cluster.strategy
    with strategy.scope():
        steps_per_epoch = math.ceil(dataset.train_count / config.batch_size)
        model = compile_model(make_model(dataset.input_shape, len(dataset.labels), config), config, steps_per_epoch)

    read_dir = run_dir if run_dir is not None else write_dir
    initial_epoch = cb.read_backup_epoch(read_dir / rf.BACKUP) if resuming else 0
    history = rf.read_json(read_dir / rf.HISTORY_JSON) if resuming and (read_dir / rf.HISTORY_JSON).is_file() else []
    resume = cb.ResumeState.from_history(history, initial_epoch, config.monitor)
    lr_resume = cb.ResumeState.from_history(history, initial_epoch, config.reduce_lr_monitor)
    if resuming and cluster.chief:
        print(f"Resuming {run_dir} at epoch {initial_epoch + 1} of {config.epochs}"
              + (f" (best so far: {config.monitor} {resume.best:.4f} at epoch {resume.best_epoch + 1})"
                 if resume.best is not None else ""))
    callbacks = [
        # Order matters: the backup is written before the history names the epoch as finished.
        cb.SharedBackupAndRestore(read_dir / rf.BACKUP, write_dir / rf.BACKUP),
        cb.RunHistory(write_dir / rf.HISTORY_CSV, write_dir / rf.HISTORY_JSON, resume),
        cb.AtomicBestCheckpoint(write_dir / rf.BEST_MODEL, config.monitor, resume),
        cb.ResumableEarlyStopping(config.monitor, config.early_stopping_patience, resume, read_dir / rf.BEST_MODEL),
        *([cb.ResumableReduceLROnPlateau(config.reduce_lr_monitor, config.reduce_lr_factor, config.reduce_lr_patience,
                                         config.min_learning_rate, lr_resume)]
          if config.lr_schedule == "plateau" else []),
        cb.TimeBudget(config.max_minutes),
        *extra_callbacks,
        cb.AgreedDecisions(cluster, adjustable_rate=config.lr_schedule == "plateau"),  # last: the chief decides
    ]
    if config.tensorboard and cluster.chief:
        callbacks.append(keras.callbacks.TensorBoard(str(write_dir / "tensorboard")))

    if dataset.streamed:
        from train.streaming import fit_inputs

        inputs = fit_inputs(dataset, config, cluster)
    else:
        inputs = {"x": dataset.x_train, "y": dataset.y_train, "validation_data": (dataset.x_val, dataset.y_val),
                  "batch_size": config.batch_size, "shuffle": True}
    started = time.monotonic()
    with warnings.catch_warnings():
        # Streamed validation under multi-worker has no known length (train/streaming.py): Keras says so.
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        model.fit(
            **inputs,
            epochs=config.epochs,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,  # a live progress bar on a terminal, a line per epoch in logs
        )
    return time.monotonic() - started


def save_arrays(run_dir: Path, dataset: Dataset, config: TrainConfig) -> None:
    """Held-out test images (at most MAX_TEST_ARRAYS: a seeded sample of a bigger test split), the validation
    split (at most MAX_VALIDATION_ARRAYS images: export fits the temperature and the out-of-distribution threshold
    on it) and a seeded training sample (int8 calibration, fine-tuning, the detector's training statistics).
    None of them grows with the data set; a streamed dataset decodes only the images kept."""
    from train.data import limit_indices

    arrays = run_dir / "arrays"
    arrays.mkdir(exist_ok=True)
    test = limit_indices(len(dataset.y_test), rf.MAX_TEST_ARRAYS, config.seed)
    kept = np.arange(min(dataset.val_count, rf.MAX_VALIDATION_ARRAYS))
    count = min(config.train_sample_size, dataset.train_count)
    chosen = np.sort(np.random.default_rng(config.seed).choice(dataset.train_count, size=count, replace=False))
    if dataset.streamed:
        parts = {rf.TEST_ARRAYS: dataset.images(dataset.test, test),
                 rf.VALIDATION_ARRAYS: dataset.images(dataset.val, kept),
                 rf.TRAIN_SAMPLE_ARRAYS: dataset.images(dataset.train, chosen)}
    else:
        parts = {rf.TEST_ARRAYS: (dataset.x_test[test], dataset.y_test[test]),
                 rf.VALIDATION_ARRAYS: (dataset.x_val[kept], dataset.y_val[kept]),
                 rf.TRAIN_SAMPLE_ARRAYS: (dataset.x_train[chosen], dataset.y_train[chosen])}
    for name, (x, y) in parts.items():
        np.savez_compressed(run_dir / name, x=x, y=y)


def rewrite_arrays(run_dir: Path) -> None:
    """arrays/ of a run, made again from its config: the split is seeded, so they are the run's own."""
    config = load_run_config(run_dir, finished_is_ok=True)
    dataset = load_dataset(replace(config, input_recipe=resolved_input_recipe(config.dataset, config.input_recipe)))
    save_arrays(run_dir, dataset, config)
    print(f"Wrote {run_dir / 'arrays'}: test {min(len(dataset.y_test), rf.MAX_TEST_ARRAYS)}, validation "
          f"{min(dataset.val_count, rf.MAX_VALIDATION_ARRAYS)} images, a training sample")


def cpu_has_bfloat16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def compute_policy(precision: str) -> str:
    if precision == "auto":
        return "mixed_bfloat16" if cpu_has_bfloat16() else "float32"
    return precision


def as_float32_model(model, config: TrainConfig, input_shape, classes: int):
    """The same weights in a model built with the float32 policy: what gets exported and evaluated.
    (Mixed precision keeps every variable in float32, so the weights carry over exactly.)"""
    import keras

    from train.model import make_model

    if model.dtype_policy.name == "float32":
        return model
    keras.mixed_precision.set_global_policy("float32")
    plain = make_model(input_shape, classes, config)
    plain.set_weights(model.get_weights())
    return plain


def finish_run(run_dir: Path, dataset: Dataset, config: TrainConfig, seconds: float) -> dict:
    """Evaluate best.keras on the test set, write metrics.json and the plots, point runs/latest here."""
    import keras

    from train.plots import write_plots

    best_path = run_dir / rf.BEST_MODEL
    if not best_path.is_file():
        raise RunError(f"Training ended without a checkpoint in {best_path} (no epoch finished?).")
    model = keras.models.load_model(best_path, safe_mode=True, compile=False)
    float32 = as_float32_model(model, config, dataset.input_shape, len(dataset.labels))
    if float32 is not model:
        float32.save(best_path.with_name(".best.float32.keras"))
        best_path.with_name(".best.float32.keras").replace(best_path)  # atomically: never half a model
        model = float32
    if dataset.streamed:  # the whole test split, a batch at a time
        parts = [predict(model, x) for x, _ in dataset.batches(dataset.test)]
        probabilities = np.concatenate(parts) if parts else np.zeros((0, len(dataset.labels)), "float32")
    else:
        probabilities = predict(model, dataset.x_test)
    predicted = probabilities.argmax(axis=1)
    loss = float(keras.losses.sparse_categorical_crossentropy(dataset.y_test, probabilities).numpy().mean())
    history = rf.read_json(run_dir / rf.HISTORY_JSON)
    metrics = summarize(dataset, predicted, loss, history, config, seconds)
    atomic_write_json(run_dir / rf.METRICS, metrics)
    write_plots(run_dir, model, in_memory_preview(dataset), history, metrics)
    point_latest(run_dir)
    print(f"Test accuracy of best.keras (epoch {metrics['best_epoch']}): {metrics['test_accuracy'] * 100:.2f} %  "
          f"-> {run_dir}")
    if config.recipe == "quick":
        print(f"This is the quick first-run recipe ({config.epochs} epochs), to have a model to try now. The full "
              "recipe (`make train`, 10 epochs, about 93 %) and `make export` publish a better version, which a "
              "running service switches to by itself.")
    return metrics


def in_memory_preview(dataset: Dataset) -> Dataset:
    """The dataset itself if it is in memory; for a streamed one, its first test images (what the plots show)."""
    if not dataset.streamed:
        return dataset
    x, y = dataset.images(dataset.test, np.arange(min(16, len(dataset.test))))
    empty = np.zeros((0, *dataset.input_shape), np.uint8), np.zeros(0, np.int64)
    return Dataset(dataset.name, dataset.labels, *empty, *empty, x, y, dataset.skipped)


def predict(model, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Inference-mode probabilities, in batches (model(x, training=False): no dropout, no augmentation)."""
    parts = [np.asarray(model(images[i:i + batch_size].astype("float32"), training=False))
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), "float32")


def summarize(dataset: Dataset, predicted: np.ndarray, loss: float, history: list[dict],
              config: TrainConfig, seconds: float) -> dict:
    labels, truth = dataset.labels, dataset.y_test
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class = {}
    for i, label in enumerate(labels):
        true_positive = int(confusion[i, i])
        predicted_count, actual_count = int(confusion[:, i].sum()), int(confusion[i, :].sum())
        per_class[label] = {
            "precision": true_positive / predicted_count if predicted_count else 0.0,
            "recall": true_positive / actual_count if actual_count else 0.0,
            "support": actual_count,
        }
    from train.callbacks import is_higher_better

    scored = [(row[config.monitor], row["epoch"]) for row in history if config.monitor in row]
    best_value, best_epoch = (max if is_higher_better(config.monitor) else min)(scored) if scored else (None, -1)
    images = dataset.train_count * len(history)
    return {
        "test_accuracy": float((predicted == truth).mean()) if len(truth) else 0.0,
        "test_loss": loss,
        "test_images": int(len(truth)),
        "train_images": int(dataset.train_count),
        "compute_precision": compute_policy(config.precision),
        "validation_images": int(dataset.val_count),
        "best_epoch": best_epoch + 1,  # 1-based, like the progress bar
        "best_" + config.monitor: best_value,
        "epochs_run": len(history),
        "training_seconds": round(seconds, 1),
        "train_images_per_second": round(images / seconds, 1) if seconds > 0 else None,
        "labels": labels,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "skipped_files": dataset.skipped,
    }


def point_latest(run_dir: Path) -> None:
    """runs/latest -> this run, replaced atomically."""
    link = run_dir.parent / rf.LATEST_LINK
    temporary = run_dir.parent / f".{rf.LATEST_LINK}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(run_dir.name)
    os.replace(temporary, link)
