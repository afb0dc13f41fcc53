"""Training across processes with tf.distribute.MultiWorkerMirroredStrategy, for real: two worker processes started
as users start them (the same `python -m train ...`, each with its own TF_CONFIG), on loopback and across two
network namespaces.

- the session's recipe on two workers: worker 1 killed after the first epoch, the chief exits with a clear message
  (exit 3), both started again with --resume continue after the last finished epoch; one complete run folder,
  written by the chief only, that loads, and is within one point of the same recipe on one process (the session
  model: same seed, same slice);
- the chief refusing a run folder stops every worker (the bug that opened issue 16: the other waited forever);
- decisions that end or change training are the chief's, on every worker;
- two "hosts" made with `ip netns` and a veth pair (root only): a streamed folder dataset, sharded by file, with
  validation shards of unequal length; what crosses the veth is the training's traffic.

    .venv/bin/python -m pytest -q tests/test_train_multiworker.py -s
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SESSION_TRAIN_ARGS

from contract import run_folder as rf
from train.testing import TrainingWorkers

keras = pytest.importorskip("keras")

RUN_FILES = {rf.BEST_MODEL, rf.CONFIG, rf.LABELS, rf.HISTORY_CSV, rf.HISTORY_JSON, rf.METRICS, "arrays", rf.TEST_ARRAYS,
             rf.TRAIN_SAMPLE_ARRAYS, rf.VALIDATION_ARRAYS, rf.PLOTS, *(f"{rf.PLOTS}/{name}.png" for name in
                                                                     ("curves", "confusion_matrix", "filters",
                                                                      "feature_maps"))}


def history(run: Path) -> list[dict]:
    try:
        return json.loads((run / rf.HISTORY_JSON).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def scratch_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("pocketcnn-worker*")}


def run_contents(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*")}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """The session's recipe on two workers; worker 1 killed once epoch 1 is in the history; both started again."""
    runs = tmp_path_factory.mktemp("multiworker-runs")
    run = runs / "mw"
    scratch_before = scratch_folders()
    workers = TrainingWorkers([*SESSION_TRAIN_ARGS, "--strategy", "multi-worker", "--runs-dir", str(runs),
                               "--run-name", "mw"], log_dir=tmp_path_factory.mktemp("worker-logs"))
    with workers:
        workers.start()
        deadline = time.monotonic() + 900
        while len(history(run)) < 1:
            codes = [process.poll() for process in workers.processes]
            assert codes == [None, None], f"a worker exited ({codes}) before epoch 1:\n{workers.outputs()}"
            assert time.monotonic() < deadline, f"no epoch in 900 s:\n{workers.outputs()}"
            time.sleep(0.1)
        workers.kill(1)
        killed = time.monotonic()
        codes = workers.wait(300)
        peer_exit_seconds = time.monotonic() - killed
        first = {"codes": codes, "chief": workers.output(0), "finished": len(history(run)),
                 "contents": run_contents(run)}
        workers.start(["--resume", str(run)])
        resumed_codes = workers.wait(900)
        resumed = {"codes": resumed_codes, "chief": workers.output(0), "other": workers.output(1),
                   "outputs": workers.outputs()}
    print(f"\nchief exited {peer_exit_seconds:.1f} s after worker 1 was killed; {first['finished']} epoch(s) kept")
    return {"run": run, "first": first, "resumed": resumed, "peer_exit_seconds": peer_exit_seconds,
            "scratch_left": scratch_folders() - scratch_before}


def test_a_worker_whose_peer_dies_exits_with_a_clear_message(killed_and_resumed):
    first, run = killed_and_resumed["first"], killed_and_resumed["run"]
    assert first["codes"][0] == 3, first["chief"][-3000:]  # not still waiting (None), not a crash (1)
    message = next(line for line in first["chief"].splitlines() if line.startswith("error:"))
    assert "another worker stopped or cannot be reached" in message
    assert f"python -m train --resume {run}" in message
    assert "Traceback" not in first["chief"]
    assert rf.METRICS not in first["contents"] and rf.BACKUP in first["contents"]


def test_both_workers_resumed_after_the_last_finished_epoch(killed_and_resumed):
    first, resumed, run = killed_and_resumed["first"], killed_and_resumed["resumed"], killed_and_resumed["run"]
    assert resumed["codes"] == [0, 0], resumed["outputs"]
    finished = first["finished"]
    assert finished in (1, 2)
    assert f"Resuming {run} at epoch {finished + 1} of 3" in resumed["chief"]
    assert f"Epoch {finished}/3" not in resumed["chief"]  # finished epochs are not trained again
    assert [row["epoch"] for row in history(run)] == [0, 1, 2], "each epoch once, none lost"
    assert "the chief wrote the run folder" in resumed["other"]


def test_only_the_chief_wrote_one_complete_run_folder(killed_and_resumed):
    run = killed_and_resumed["run"]
    assert run_contents(run) == RUN_FILES, "exactly the run folder's files: no backup left, nothing from worker 1"
    assert {p.name for p in run.parent.iterdir()} == {"mw", rf.LATEST_LINK}
    assert killed_and_resumed["scratch_left"] == set(), "the other worker's scratch folder is removed"


def test_the_run_loads_and_is_within_a_point_of_one_process(killed_and_resumed, trained_run):
    run = killed_and_resumed["run"]
    metrics = json.loads((run / rf.METRICS).read_text())
    model = keras.models.load_model(run / rf.BEST_MODEL, safe_mode=True)
    test = np.load(run / rf.TEST_ARRAYS)
    predicted = np.asarray(model(test["x"].astype("float32"), training=False)).argmax(axis=1)
    assert (predicted == test["y"]).mean() == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    one_process = json.loads((trained_run / rf.METRICS).read_text())
    assert json.loads((run / rf.CONFIG).read_text()) | {"strategy": "none", "run_name": "session",
                                                       "runs_dir": ""} == \
        json.loads((trained_run / rf.CONFIG).read_text()) | {"runs_dir": ""}, "the same recipe, seed and slice"
    print(f"\ntest accuracy: two workers (killed and resumed) {metrics['test_accuracy']:.4f}, "
          f"one process {one_process['test_accuracy']:.4f}")
    assert abs(metrics["test_accuracy"] - one_process["test_accuracy"]) <= 0.01


def test_a_run_folder_the_chief_refuses_stops_every_worker(tmp_path):
    """The bug that opened issue 16: the chief refused the run folder and exited, its peer waited for it forever."""
    (tmp_path / "mw").mkdir()
    (tmp_path / "mw" / rf.CONFIG).write_text("{}")  # an unfinished run is there already
    workers = TrainingWorkers(["--strategy", "multi-worker", "--train-limit", "500", "--test-limit", "100",
                               "--runs-dir", str(tmp_path), "--run-name", "mw"], log_dir=tmp_path / "logs")
    with workers:
        codes = workers.start().wait(300)
        assert codes == [2, 2], workers.outputs()
        assert "holds an unfinished run; continue it with" in workers.output(0)
        assert "the chief could not start the run" in workers.output(1)
    assert sorted(p.name for p in (tmp_path / "mw").iterdir()) == [rf.CONFIG], "nothing written by anyone"


class FakeCluster:
    """Two workers, as AgreedDecisions sees them: agree() returns the chief's values."""

    multi_worker = True

    def __init__(self, chief_values: list[float]):
        self.chief_values = chief_values
        self.asked: list[list[float]] = []

    def agree(self, values, ok=True):
        self.asked.append(list(values))
        return list(self.chief_values), True


@pytest.mark.parametrize("mine,chief", [((True, 1e-3), (False, 1e-3)), ((False, 1e-3), (True, 5e-4)),
                                        ((False, 2e-3), (False, 1e-3))])
def test_the_chiefs_decisions_replace_every_workers_own(mine, chief):
    """A worker's own early stopping, time budget or rate reduction (`mine`) gives way to the chief's."""
    from train.callbacks import AgreedDecisions

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(mine[1]), "mse")
    cluster = FakeCluster([float(chief[0]), chief[1]])
    decisions = AgreedDecisions(cluster, adjustable_rate=True)
    decisions.set_model(model)
    model.stop_training = mine[0]
    decisions.on_epoch_end(0, {})
    assert cluster.asked == [[float(mine[0]), pytest.approx(mine[1])]]
    assert model.stop_training is chief[0]
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(chief[1])


# --- two hosts: network namespaces joined by a veth pair ----------------------------------------------------------

class TwoHosts:
    """Two network namespaces joined by a veth pair (10.231.16.1 and .2), as two machines on one wire."""

    def __init__(self):
        tag = f"pcnn{os.getpid() % 100000}"
        self.names = [f"{tag}a", f"{tag}b"]
        self.devices = [f"{tag}va", f"{tag}vb"]
        self.addresses = ["10.231.16.1", "10.231.16.2"]

    def __enter__(self) -> "TwoHosts":
        def ip(*args):
            subprocess.run(["ip", *args], check=True, capture_output=True)

        try:
            for name in self.names:
                ip("netns", "add", name)
            ip("link", "add", self.devices[0], "type", "veth", "peer", "name", self.devices[1])
            for name, device, address in zip(self.names, self.devices, self.addresses, strict=True):
                ip("link", "set", device, "netns", name)
                ip("-n", name, "addr", "add", f"{address}/24", "dev", device)
                ip("-n", name, "link", "set", device, "up")
                ip("-n", name, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def bytes_sent(self, index: int) -> int:
        out = subprocess.run(["ip", "-j", "-s", "-n", self.names[index], "link", "show", self.devices[index]],
                             check=True, capture_output=True, text=True).stdout
        return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])

    def prefix(self, index: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[index]]

    def __exit__(self, *exc) -> None:
        for name in self.names:  # the veth pair goes with its namespaces
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(scope="module")
def uneven_photo_folder(tmp_path_factory, fashion_mnist_test):
    """Three classes of real Fashion-MNIST pictures as 64x64 PNG and JPEG files: 61 + 60 + 50 files (one of them
    unreadable), so that the validation split (17 images) cannot be shared evenly between two workers."""
    from helpers import encode, to_picture

    x, y = fashion_mnist_test
    root = tmp_path_factory.mktemp("uneven-photos")
    for label, name, count in ((0, "t-shirt", 60), (1, "trouser", 60), (7, "sneaker", 50)):
        (root / name).mkdir()
        for i, index in enumerate(np.flatnonzero(y == label)[:count]):
            picture = to_picture(x[index]).resize((64, 64)).convert("RGB")
            (root / name / f"{i:03d}.{'jpg' if i % 2 else 'png'}").write_bytes(
                encode(picture, "JPEG" if i % 2 else "PNG"))
    (root / "t-shirt" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces (ip netns add) need root")
def test_two_workers_on_two_hosts_stream_a_folder_sharded_by_file(uneven_photo_folder, tmp_path):
    from train.config import TrainConfig
    from train.data import load_dataset

    args = ["--strategy", "multi-worker", "--dataset", "folder", "--data-dir", str(uneven_photo_folder),
            "--image-size", "32", "--epochs", "2", "--batch-size", "16", "--filters", "8,16", "--dense-units", "32",
            "--train-sample-size", "50", "--precision", "float32", "--runs-dir", str(tmp_path), "--run-name", "hosts"]
    with TwoHosts() as hosts:
        workers = TrainingWorkers(args, addresses=[f"{address}:2222" for address in hosts.addresses],
                                  prefixes=[hosts.prefix(0), hosts.prefix(1)], log_dir=tmp_path / "logs")
        with workers:
            before = [hosts.bytes_sent(0), hosts.bytes_sent(1)]
            codes = workers.start().wait(600)
            sent = [hosts.bytes_sent(i) - before[i] for i in (0, 1)]
            assert codes == [0, 0], workers.outputs()
            outputs = workers.outputs()
    run = tmp_path / "hosts"
    assert run_contents(run) == RUN_FILES
    assert "read from disk batch by batch" in outputs and "Skipped 1 of 171 files" in outputs
    # Gradients crossed the wire both ways at every step (two epochs of 9 steps): in a ring of two, each worker
    # sends the size of the gradients once per step.
    weights = sum(int(np.prod(w.shape)) * 4 for w in keras.models.load_model(run / rf.BEST_MODEL).trainable_weights)
    print(f"\nacross the veth: {sent[0]:,} and {sent[1]:,} bytes sent; trainable weights {weights:,} bytes")
    assert min(sent) > 18 * weights
    # Validation was sharded unevenly (9 and 8 images) and still counted every image once: the best epoch's
    # recorded val_accuracy is what the saved model scores on the validation split, evaluated here in one process.
    dataset = load_dataset(TrainConfig(dataset="folder", data_dir=str(uneven_photo_folder), image_size=32,
                                       stream="false"))
    assert len(dataset.x_val) == 17
    model = keras.models.load_model(run / rf.BEST_MODEL, safe_mode=True)
    accuracy = (np.asarray(model(dataset.x_val.astype("float32"), training=False)).argmax(1) == dataset.y_val).mean()
    metrics = json.loads((run / rf.METRICS).read_text())
    assert accuracy == pytest.approx(metrics["best_val_accuracy"], abs=1e-6)
