"""Whole training runs on slices of real Fashion-MNIST: the run folder, the best checkpoint, resuming."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from dataclasses import replace

import numpy as np
import pytest

from contract import run_folder as rf

keras = pytest.importorskip("keras")

from train.cli import build_parser, main  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.data import load_dataset  # noqa: E402
from train.run import train  # noqa: E402

pytestmark = pytest.mark.slow

# float32 so that a checkpoint's accuracy recomputed here equals the one logged during training exactly;
# the mixed-precision path has its own test below (and the session model is trained with the defaults).
SMALL = TrainConfig(train_limit=2000, test_limit=500, epochs=1, filters=(16, 32), dense_units=64,
                    train_sample_size=300, precision="float32")


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return train(replace(SMALL, runs_dir=str(runs), run_name="one-epoch"))


def test_one_epoch_run_writes_every_file(one_epoch_run):
    run = one_epoch_run
    for name in (rf.BEST_MODEL, rf.CONFIG, rf.LABELS, rf.HISTORY_CSV, rf.HISTORY_JSON, rf.METRICS,
                 rf.TEST_ARRAYS, rf.TRAIN_SAMPLE_ARRAYS):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for plot in ("curves.png", "confusion_matrix.png", "filters.png", "feature_maps.png"):
        assert (run / rf.PLOTS / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    assert not (run / rf.BACKUP).exists(), "the resumable state is removed once the run has finished"
    assert (run.parent / rf.LATEST_LINK).resolve() == run.resolve()
    assert rf.read_labels(run / rf.LABELS)[0] == "T-shirt/top"
    config = json.loads((run / rf.CONFIG).read_text())
    assert config["train_limit"] == 2000 and config["filters"] == [16, 32]
    metrics = json.loads((run / rf.METRICS).read_text())
    assert set(metrics) >= {"test_accuracy", "test_loss", "per_class", "confusion_matrix", "best_epoch"}
    assert metrics["test_images"] == 500 and np.sum(metrics["confusion_matrix"]) == 500
    assert set(metrics["per_class"]["Trouser"]) == {"precision", "recall", "support"}
    with open(run / rf.HISTORY_CSV) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and {"loss", "val_accuracy", "learning_rate"} <= set(rows[0])


def test_best_model_reproduces_the_reported_test_accuracy(one_epoch_run):
    metrics = json.loads((one_epoch_run / rf.METRICS).read_text())
    model = keras.models.load_model(one_epoch_run / rf.BEST_MODEL, safe_mode=True)
    test = np.load(one_epoch_run / rf.TEST_ARRAYS)
    predicted = np.asarray(model(test["x"].astype("float32"), training=False)).argmax(axis=1)
    assert (predicted == test["y"]).mean() == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert metrics["test_accuracy"] > 0.3  # one epoch on 2000 real images learns something (chance: 10 %)


class WreckLastEpoch(keras.callbacks.Callback):
    """Make the final epoch much worse (a huge learning rate), so the best epoch is not the last."""

    def __init__(self, last_epoch: int):
        super().__init__()
        self.last_epoch = last_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.last_epoch:
            self.model.optimizer.learning_rate.assign(5.0)


def test_the_kept_checkpoint_is_the_best_epoch_not_the_last(tmp_path):
    # plateau: a learning rate the callback can set (one-cycle's is a schedule)
    config = replace(SMALL, epochs=3, runs_dir=str(tmp_path), run_name="wrecked", early_stopping_patience=5,
                     lr_schedule="plateau")
    run = train(config, extra_callbacks=[WreckLastEpoch(2)])
    history = json.loads((run / rf.HISTORY_JSON).read_text())
    accuracies = [row["val_accuracy"] for row in history]
    assert len(accuracies) == 3 and accuracies[2] < max(accuracies[:2]), accuracies
    best = int(np.argmax(accuracies))
    metrics = json.loads((run / rf.METRICS).read_text())
    assert metrics["best_epoch"] == best + 1
    # best.keras really holds that epoch: its validation accuracy is the best one, not the last one
    dataset = load_dataset(config)
    model = keras.models.load_model(run / rf.BEST_MODEL, safe_mode=True)
    val = (np.asarray(model(dataset.x_val.astype("float32"), training=False)).argmax(1) == dataset.y_val).mean()
    assert val == pytest.approx(accuracies[best], abs=1e-6)
    assert val > accuracies[2] + 0.05


def _history_rows(path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def test_a_killed_run_resumes_after_its_last_finished_epoch(tmp_path, python):
    run = tmp_path / "killed"
    command = [python, "-m", "train", "--train-limit", "4000", "--test-limit", "300", "--epochs", "4",
               "--filters", "16,32", "--dense-units", "64", "--runs-dir", str(tmp_path), "--run-name", "killed"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while len(_history_rows(run / rf.HISTORY_JSON)) < 2:
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "training did not reach epoch 2 in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no chance to clean up: like a power cut or an OOM kill
    process.wait()
    finished = len(_history_rows(run / rf.HISTORY_JSON))
    assert finished in (2, 3) and not (run / rf.METRICS).exists()
    assert (run / rf.BACKUP).is_dir() and (run / rf.BEST_MODEL).is_file()

    resumed = subprocess.run([python, "-m", "train", "--resume", str(run)], capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming {run} at epoch {finished + 1} of 4" in resumed.stdout
    assert f"Epoch {finished}/4" not in resumed.stdout  # finished epochs are not trained again
    epochs = [row["epoch"] for row in _history_rows(run / rf.HISTORY_JSON)]
    assert epochs == [0, 1, 2, 3], "each epoch exactly once, none lost"
    assert (run / rf.METRICS).is_file() and not (run / rf.BACKUP).exists()


def test_resume_refuses_finished_or_missing_runs(one_epoch_run, tmp_path, capsys):
    assert main(["--resume", str(one_epoch_run)]) == 2
    assert "already finished" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_mixed_precision_training_saves_a_float32_model(tmp_path):
    """bfloat16 compute for speed, but what is saved (and exported) is a plain float32 model."""
    # 256 images: on a CPU without bfloat16 instructions (AVX2 only) it is emulated, many times slower.
    run = train(replace(SMALL, train_limit=256, precision="mixed_bfloat16", runs_dir=str(tmp_path), run_name="bf16"))
    assert json.loads((run / rf.CONFIG).read_text())["precision"] == "mixed_bfloat16"
    model = keras.models.load_model(run / rf.BEST_MODEL, safe_mode=True)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    test = np.load(run / rf.TEST_ARRAYS)
    predicted = np.asarray(model(test["x"].astype("float32"), training=False)).argmax(axis=1)
    assert (predicted == test["y"]).mean() == pytest.approx(json.loads((run / rf.METRICS).read_text())["test_accuracy"])
    assert keras.mixed_precision.global_policy().name == "float32", "the process-wide policy is restored"


def test_cosine_schedule_decays_the_rate_every_epoch_down_to_the_minimum(tmp_path):
    config = replace(SMALL, train_limit=1000, epochs=3, lr_schedule="cosine", learning_rate=1e-3,
                     min_learning_rate=1e-5, runs_dir=str(tmp_path), run_name="cosine")
    run = train(config)
    rates = [row["learning_rate"] for row in json.loads((run / rf.HISTORY_JSON).read_text())]
    assert len(rates) == 3 and rates[0] < 1e-3 and rates[0] > rates[1] > rates[2]
    assert rates[2] == pytest.approx(1e-5, rel=1e-3)  # the end of the decay, after the last step
    # Half-way (1.5 epochs), a cosine from 1e-3 to 1e-5 is at their mean; at 1 and 2 epochs it is above and below.
    assert rates[0] > (1e-3 + 1e-5) / 2 > rates[1]


def test_mirrored_strategy_trains(tmp_path):
    run = train(replace(SMALL, train_limit=512, strategy="mirrored", runs_dir=str(tmp_path), run_name="mirrored"))
    assert json.loads((run / rf.METRICS).read_text())["epochs_run"] == 1


def test_help_explains_every_option():
    text = build_parser().format_help()
    for option in ("--dataset", "--data-dir", "--epochs", "--learning-rate", "--optimizer", "--strategy",
                   "--base", "--base-weights", "--fine-tune", "--weight-decay", "--tensorboard", "--resume",
                   "--batch-size", "--conv-dropout", "--early-stopping-patience", "--reduce-lr-patience"):
        assert option in text, option
    assert f"(default: {TrainConfig().epochs})" in text  # defaults are shown: they are the benchmark recipe


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--optimizer", "adagrad"], "invalid choice: 'adagrad'"),
    (["--filters", "32,x"], "comma-separated integers"),
    (["--validation-fraction", "0.9"], "between 0 and 0.5"),
    (["--base-weights", "/no/such/file.h5"], "no file at /no/such/file.h5"),
])
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_is_a_clear_error_and_creates_no_run(tmp_path, capsys):
    code = main(["--data-dir", str(tmp_path / "empty"), "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
