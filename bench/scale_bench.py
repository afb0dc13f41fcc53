"""Beyond one machine (issue #16): what the ways of growing past one process give, measured on this machine.

  folders    a folder of photos read into memory (--stream false) or from disk batch by batch (--stream true), at
             several sizes: peak memory and images/s, each measurement in a fresh process, two ways: the training
             input pipeline under model.fit with a model that costs next to nothing (the same inputs train/run.py
             gives model.fit), and a real `python -m train ... --epochs 1` run
  workers    `python -m train --strategy multi-worker` in two processes (train/testing.py's TrainingWorkers, one
             intra-op thread each) against one process with the same recipe: images/s from each run's metrics.json
  serving    requests/s and p99 with wrk (bench/serve_bench.py's functions): one replica direct, one replica behind
             HAProxy (deploy/haproxy/haproxy.cfg, serve/testing.py's HAProxy), two replicas behind HAProxy, and one
             replica with the workers of both, direct

    python -m bench.scale_bench --out bench/results/scale.json [--photos 5000,50000] [--seconds 4] [--quick]

--quick: tiny sizes (300 photos, short runs, one slice per target), a smoke test of a few minutes; its figures mean
nothing. The photos are generated once (real Fashion-MNIST garments, tinted, on noisy tinted backgrounds, 96x96,
half JPEG and half PNG, one sub-folder per class) and reused. markdown(report) is the BENCHMARKS.md section.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
PHOTO_SIZE = 96
PHOTO_FOLDER_VERSION = 1  # bump when make_photo_folder draws other photos: cached folders are then made again
RESULT_PREFIX = "SCALE_JSON "
PARTS = ("folders", "workers", "serving")
# An in-memory folder holds every decoded image about twice over at its peak (the decoded list, np.stack), on top
# of TensorFlow and the model; three copies are budgeted: beyond what the machine has, it is not attempted and the
# report says so.
IN_MEMORY_COPIES = 3
BASELINE_BYTES = 1.5 * 2**30

FULL = {"photos": "5000,50000", "seconds": 4, "rounds": 3, "train_limit": 6000, "epochs": 2, "training_rounds": 3,
        "concurrencies": "8,32"}
QUICK = {"photos": "300", "seconds": 2, "rounds": 1, "train_limit": 1200, "epochs": 1, "training_rounds": 1,
         "concurrencies": "8"}


# --- photos -------------------------------------------------------------------------------------------------------

def photo(garment: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 96x96 RGB photo of a 28x28 Fashion-MNIST garment: scaled, tinted and placed at random on a tinted,
    shaded, noisy background (noise keeps the PNG files as big as a photo's)."""
    from PIL import Image

    side = int(rng.integers(60, 89))
    scaled = np.asarray(Image.fromarray(garment).resize((side, side), Image.Resampling.BILINEAR), np.float32)
    shade = np.linspace(-20, 20, PHOTO_SIZE, dtype=np.float32)[:, None, None] * rng.uniform(-1, 1)
    background = rng.uniform(140, 235, 3).astype(np.float32) + shade + rng.normal(0, 6, (PHOTO_SIZE, PHOTO_SIZE, 3))
    top, left = (int(v) for v in rng.integers(0, PHOTO_SIZE - side + 1, 2))
    alpha = (scaled / 255.0)[..., None]
    region = background[top:top + side, left:left + side]
    background[top:top + side, left:left + side] = region * (1 - alpha) + rng.uniform(20, 200, 3) * alpha
    return np.clip(background, 0, 255).astype(np.uint8)


def make_photo_folder(folder: Path, count: int, fashion_mnist_dir: str = FASHION_MNIST_DIR) -> Path:
    """`count` photos in one sub-folder per Fashion-MNIST class (even ones PNG, odd ones JPEG); reused when a
    complete folder of the same count is there already."""
    from PIL import Image

    from train.data import FASHION_MNIST_LABELS, read_idx

    marker = folder / "complete.json"
    wanted = {"photos": count, "size": PHOTO_SIZE, "version": PHOTO_FOLDER_VERSION}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    images = read_idx(Path(fashion_mnist_dir) / "train-images-idx3-ubyte.gz")
    labels = read_idx(Path(fashion_mnist_dir) / "train-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(count)
    started = time.monotonic()
    classes = len(FASHION_MNIST_LABELS)
    for label, name in enumerate(FASHION_MNIST_LABELS):
        where = folder / name.replace("/", "-").replace(" ", "-").lower()
        where.mkdir(parents=True)
        indices = np.flatnonzero(labels == label)
        for i in range(count // classes + (label < count % classes)):
            picture = Image.fromarray(photo(images[indices[i % len(indices)]], rng))
            if i % 2:
                picture.save(where / f"{i:05d}.jpg", format="JPEG", quality=90)
            else:
                picture.save(where / f"{i:05d}.png", format="PNG")
    marker.write_text(json.dumps(wanted))
    print(f"  made {count:,} photos in {folder} ({time.monotonic() - started:.0f} s)", flush=True)
    return folder


def folder_megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


# --- processes ----------------------------------------------------------------------------------------------------

def child_env(threads: int | None = None) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT))
    if threads:
        env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads),
                   OMP_NUM_THREADS=str(threads))
    return env


def run_process(command: list[str], log_path: Path, env: dict, timeout: float) -> dict:
    """Run `command` to its end in a fresh process; its exit code, wall seconds and peak resident memory (the
    kernel's ru_maxrss of that process, from wait4). A process still running after `timeout` is killed."""
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > timeout:
                os.killpg(process.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.1)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return {"exit_code": process.returncode, "wall_seconds": round(time.monotonic() - started, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # ru_maxrss: kilobytes on Linux


def tail(path: Path, characters: int = 3000) -> str:
    return path.read_text(errors="replace")[-characters:]


def checked(result: dict, log_path: Path, what: str) -> dict:
    if result["exit_code"] != 0:
        raise RuntimeError(f"{what} exited with {result['exit_code']} (log {log_path}):\n{tail(log_path)}")
    return result


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: the peak so far), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise KeyError(field)


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# --- 1. folders: streamed or in memory ----------------------------------------------------------------------------

def measure_input_pipeline(data_dir: str, stream: str, batch_size: int = 128, epochs: int = 2) -> dict:
    """In this (fresh) process: load the folder as training does, then `epochs` epochs of model.fit on exactly the
    inputs train/run.py gives it (validation included), with a model that costs next to nothing (a global average and
    one dense layer): what the input pipeline alone reads per second, and the memory it holds. The last epoch is
    the one timed (the first also traces the training step)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import keras

    from train.cluster import Cluster
    from train.config import TrainConfig
    from train.data import load_dataset

    class EpochSeconds(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):  # after the epoch's validation
            self.seconds.append(time.monotonic() - self.started)

    found = {"rss_mb_tensorflow_loaded": status_mb("VmRSS")}
    config = TrainConfig(dataset="folder", data_dir=data_dir, image_size=PHOTO_SIZE, stream=stream,
                         batch_size=batch_size)
    started = time.monotonic()
    dataset = load_dataset(config)
    found.update(load_seconds=round(time.monotonic() - started, 1), streamed=dataset.streamed,
                 train_images=dataset.train_count, validation_images=dataset.val_count,
                 rss_mb_loaded=status_mb("VmRSS"), peak_rss_mb_loaded=status_mb("VmHWM"))
    keras.utils.set_random_seed(config.seed)
    model = keras.Sequential([keras.Input(dataset.input_shape), keras.layers.Rescaling(1 / 255),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(len(dataset.labels))])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if dataset.streamed:  # as train/run.py builds model.fit's inputs
        from train.streaming import fit_inputs

        inputs = fit_inputs(dataset, config, Cluster(None))
    else:
        inputs = {"x": dataset.x_train, "y": dataset.y_train, "validation_data": (dataset.x_val, dataset.y_val),
                  "batch_size": config.batch_size, "shuffle": True}
    timer = EpochSeconds()
    model.fit(**inputs, epochs=epochs, verbose=0, callbacks=[timer])
    seconds = timer.seconds[-1]
    found.update(first_epoch_seconds=round(timer.seconds[0], 2), epoch_seconds=round(seconds, 2),
                 images_per_second=round(dataset.train_count / seconds, 1), rss_mb_end=status_mb("VmRSS"),
                 peak_rss_mb=status_mb("VmHWM"))
    return found


def pipeline_run(data_dir: Path, stream: str, logs: Path, timeout: float) -> dict:
    log_path = logs / f"pipeline-{data_dir.name}-stream-{stream}.log"
    result = checked(run_process([sys.executable, "-m", "bench.scale_bench", "--measure-pipeline", str(data_dir),
                                  "--stream", stream], log_path, child_env(), timeout), log_path,
                     f"the input pipeline of {data_dir} (--stream {stream})")
    line = next(line for line in reversed(log_path.read_text().splitlines()) if line.startswith(RESULT_PREFIX))
    return {**json.loads(line[len(RESULT_PREFIX):]), "process_peak_rss_mb": result["peak_rss_mb"],
            "wall_seconds": result["wall_seconds"]}


def training_run(args: list[str], runs: Path, name: str, logs: Path, timeout: float,
                 threads: int | None = None) -> dict:
    """`python -m train <args>` in a fresh process; its metrics.json's speed, its wall time and peak memory."""
    log_path = logs / f"train-{name}.log"
    command = [sys.executable, "-m", "train", *args, "--runs-dir", str(runs), "--run-name", name]
    result = checked(run_process(command, log_path, child_env(threads), timeout), log_path, " ".join(command[1:]))
    return {**result, **run_metrics(runs / name)}


def run_metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    return {key: metrics[key] for key in ("training_seconds", "train_images_per_second", "train_images",
                                          "epochs_run", "test_accuracy")}


def bench_folders(counts: list[int], photos_root: Path, work: Path, timeout: float,
                  train_up_to: int = 5000) -> list[dict]:
    """Each folder size read both ways; a real training epoch as well up to `train_up_to` photos (at 50 000 it
    takes a quarter of an hour each way on 2 cores, and the pipeline already shows the memory and the rate)."""
    rows = []
    for count in counts:
        folder = make_photo_folder(photos_root / f"photos-{count}", count)
        megabytes = round(folder_megabytes(folder), 1)
        decoded = count * PHOTO_SIZE * PHOTO_SIZE * 3
        for stream in ("false", "true"):
            row = {"photos": count, "stream": stream, "folder_mb": megabytes, "decoded_mb": round(decoded / 2**20, 1)}
            need = IN_MEMORY_COPIES * decoded + BASELINE_BYTES
            if stream == "false" and need > available_bytes():
                row["skipped"] = (f"needs about {need / 2**30:.1f} GiB, {available_bytes() / 2**30:.1f} GiB "
                                  "available: not attempted")
                print(f"  {count:>6,} photos, in memory: skipped ({row['skipped']})", flush=True)
                rows.append(row)
                continue
            row["pipeline"] = pipeline_run(folder, stream, work / "logs", timeout)
            if count > train_up_to:
                pipe = row["pipeline"]
                print(f"  {count:>6,} photos, --stream {stream:<5}: pipeline {pipe['images_per_second']:>8,.0f} "
                      f"images/s, peak {pipe['peak_rss_mb']:,.0f} MiB (load {pipe['load_seconds']:.0f} s)", flush=True)
                rows.append(row)
                continue
            row["training"] = training_run(["--dataset", "folder", "--data-dir", str(folder), "--image-size",
                                            str(PHOTO_SIZE), "--epochs", "1", "--stream", stream],
                                           work / "runs", f"folder-{count}-stream-{stream}", work / "logs", timeout)
            shutil.rmtree(work / "runs" / f"folder-{count}-stream-{stream}", ignore_errors=True)
            pipe, run = row["pipeline"], row["training"]
            print(f"  {count:>6,} photos, --stream {stream:<5}: pipeline {pipe['images_per_second']:>8,.0f} images/s, "
                  f"peak {pipe['peak_rss_mb']:,.0f} MiB (load {pipe['load_seconds']:.0f} s); python -m train "
                  f"{run['train_images_per_second']:,.0f} images/s, peak {run['peak_rss_mb']:,.0f} MiB, "
                  f"{run['wall_seconds']:.0f} s in all", flush=True)
            rows.append(row)
    return rows


# --- 2. two training workers against one process ------------------------------------------------------------------

def bench_workers(train_limit: int, epochs: int, rounds: int, work: Path, timeout: float) -> dict:
    """The same recipe on a Fashion-MNIST slice: one process (TensorFlow's own threads: every core), one process
    with one thread (what each of the two workers has), two multi-worker processes of one thread each. Taken in
    turn, `rounds` times, the order rotated (the machine's speed drifts)."""
    from train.testing import TrainingWorkers

    recipe = ["--train-limit", str(train_limit), "--test-limit", "1000", "--epochs", str(epochs),
              "--train-sample-size", "1000", "--precision", "float32"]
    runs, logs = work / "runs", work / "logs"
    setups = ("one_process", "two_workers", "one_process_one_thread")
    found: dict[str, list[dict]] = {name: [] for name in setups}
    for round_ in range(rounds):
        for setup in setups[round_ % 3:] + setups[:round_ % 3]:
            name = f"{setup}-{round_}"
            if setup == "two_workers":
                workers = TrainingWorkers([*recipe, "--strategy", "multi-worker", "--runs-dir", str(runs),
                                           "--run-name", name], python=sys.executable, log_dir=logs / name)
                with workers:
                    started = time.monotonic()
                    codes = workers.start().wait(timeout)
                    wall = round(time.monotonic() - started, 1)
                    if codes != [0, 0]:
                        raise RuntimeError(f"two workers exited with {codes}:\n{workers.outputs()}")
                result = {"wall_seconds": wall, **run_metrics(runs / name)}
            else:
                result = training_run(recipe, runs, name, logs, timeout,
                                      threads=1 if setup == "one_process_one_thread" else None)
            shutil.rmtree(runs / name, ignore_errors=True)
            found[setup].append(result)
            print(f"  {setup:<23} {result['train_images_per_second']:>7,.0f} images/s "
                  f"(fit {result['training_seconds']:.0f} s, process {result['wall_seconds']:.0f} s)", flush=True)
    summary = {name: median_run(results) for name, results in found.items()}
    return {"recipe": recipe, "rounds": rounds, "runs": found, "median": summary,
            "two_workers_vs_one_process": round(summary["two_workers"]["train_images_per_second"]
                                                / summary["one_process"]["train_images_per_second"], 3),
            "two_workers_vs_one_thread": round(summary["two_workers"]["train_images_per_second"]
                                               / summary["one_process_one_thread"]["train_images_per_second"], 3)}


def median_run(results: list[dict]) -> dict:
    """The middle run by speed (of an even number: the faster of the two in the middle)."""
    ordered = sorted(results, key=lambda r: r["train_images_per_second"])
    return ordered[len(ordered) // 2]


# --- 3. one and two serving replicas behind HAProxy ---------------------------------------------------------------

class Balanced:
    """HAProxy in front of replicas, as bench.serve_bench.interleaved sees a server: a URL, and the worker processes
    whose CPU time counts (the replicas' workers; HAProxy's own is not counted)."""

    def __init__(self, proxy, replicas):
        self.proxy, self.replicas = proxy, replicas
        self.url = proxy.url

    def worker_pids(self) -> list[int]:
        return [pid for replica in self.replicas for pid in replica.worker_pids()]


def tiny_repository(folder: Path) -> tuple[Path, str]:
    """The tests' tiny model (tests/tiny_model.py: a linear classifier as ONNX, built in a second) published in
    `folder`, and the format to serve: for --quick, when no exported model is at hand."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import TINY_FORMAT, publish_tiny_model

    from train.data import FASHION_MNIST_LABELS, load_fashion_mnist

    x_train, y_train, x_test, y_test = load_fashion_mnist(FASHION_MNIST_DIR)
    publish_tiny_model(folder, (x_train[:4500], y_train[:4500]), (x_test[:1000], y_test[:1000]), FASHION_MNIST_LABELS)
    return folder, TINY_FORMAT


def has_published_version(models: Path) -> bool:
    return any(models.glob("*/*/manifest.json"))


def bench_serving(models: Path, model_format: str | None, replica_workers: int, threads: int, seconds: int,
                  rounds: int, concurrencies: list[int], work: Path) -> dict:
    from bench.serve_bench import Server, interleaved, make_images, warm_up
    from serve.testing import HAProxy

    image = make_images(work / "images")["png_28x28"]
    env = {"POCKETCNN_MODEL_REPOSITORY": str(models.resolve()), "POCKETCNN_POLL_SECONDS": "0",
           **({"POCKETCNN_MODEL_FORMAT": model_format} if model_format else {})}
    app = "serve:create_app()"
    report = {"settings": {"replica_workers": replica_workers, "threads": threads, "rounds": rounds,
                           "wrk": f"wrk -t1 -c{{{','.join(map(str, concurrencies))}}} -d{seconds}s",
                           "image": "png_28x28", "cores": os.cpu_count()}, "runs": []}
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(Server(app, env, replica_workers, threads))
        second = stack.enter_context(Server(app, env, replica_workers, threads))
        double = stack.enter_context(Server(app, env, 2 * replica_workers, threads))
        one = stack.enter_context(HAProxy([f"127.0.0.1:{first.port}"], log_path=work / "logs" / "haproxy-one.log"))
        two = stack.enter_context(HAProxy([f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"],
                                          log_path=work / "logs" / "haproxy-two.log"))
        with urllib_json(first.url + "/model") as info:
            report["model"] = {"name": info["served"]["name"], "version": info["served"]["version"],
                               "format": info["served"]["format"]}
        targets = {"one_replica_direct": first, "one_replica_haproxy": Balanced(one, [first]),
                   "two_replicas_haproxy": Balanced(two, [first, second]), "one_replica_double_workers": double}
        for target in targets.values():
            warm_up(target.url, image)
        for connections in concurrencies:
            results = interleaved(targets, image, connections, seconds, rounds)
            for name, stats in results.items():
                report["runs"].append({"setup": name, "concurrency": connections, **stats})
            print(f"  c={connections:<3} " + "  ".join(f"{name} {stats['requests_per_second']:,.0f} req/s "
                                                       f"(p99 {stats['p99_ms']:.1f} ms)"
                                                       for name, stats in results.items()), flush=True)
        report["requests_per_replica"] = {name: int(row["stot"]) for name, row in two.states().items()}
    return report


@contextlib.contextmanager
def urllib_json(url: str):
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the local server's own http URL
        yield json.load(response)


# --- the BENCHMARKS.md section ------------------------------------------------------------------------------------

def markdown(report: dict) -> list[str]:
    """The BENCHMARKS.md section for bench/results/scale.json (the parts it has)."""
    lines = ["## Beyond one machine", "",
             f"Measured {report['date']} on {report['cores']} CPU cores ({report['cpu']}), with "
             f"`{report['command']}` (results in `bench/results/scale.json`). One machine can show what each way of "
             "growing past one process costs, not what a second machine would give: every process here shares the "
             "same cores."]
    if report.get("quick"):
        lines += ["", "**A --quick smoke run: sizes far too small for these figures to mean anything.**"]
    lines.append("")
    if "folders" in report:
        lines += folders_markdown(report["folders"])
    if "workers" in report:
        lines += workers_markdown(report["workers"], report["cores"])
    if "serving" in report:
        lines += serving_markdown(report["serving"])
    return lines


def folders_markdown(rows: list[dict]) -> list[str]:
    measured = [r for r in rows if "pipeline" in r]
    lines = [
        "### A folder bigger than memory: streamed from disk or decoded into memory", "",
        f"Photos made for this (real Fashion-MNIST garments, scaled, tinted and placed on noisy tinted backgrounds, "
        f"{PHOTO_SIZE}×{PHOTO_SIZE} RGB, half JPEG and half PNG, 10 class sub-folders), read with `--stream false` "
        "(`load_image_folder`: every photo decoded once into memory) and `--stream true` (`train/streaming.py`: "
        "file lists, each batch decoded from disk every epoch). Each figure comes from a fresh process. Two "
        "measurements: **the input pipeline**: `load_dataset` (its seconds: the load column), then two epochs of "
        "`model.fit` on exactly the inputs `train/run.py` gives it, validation included, with a model that costs next "
        "to nothing (global average, one dense layer), so that the reading is what is timed (the second epoch: the "
        "first also traces the step); and **training**: `python -m train --dataset folder "
        f"--image-size {PHOTO_SIZE} --epochs 1 --stream true|false` (the default model), its images/s from "
        "metrics.json (training images / seconds of `fit`, the first step's tracing included), its peak from the "
        "kernel (`ru_maxrss`); the process column is its whole run (load, epoch, evaluation, plots). The files are "
        "read from the page cache (they were just written), not from a cold disk.", "",
        "| photos | files | --stream | pipeline: load | pipeline: epoch | pipeline images/s | pipeline peak RSS "
        "(above TensorFlow's) | training images/s | training peak RSS | training process |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        head = f"| {row['photos']:,} | {row['folder_mb']:,.0f} MB | {row['stream']} |"
        if "skipped" in row:
            lines.append(f"{head} {row['skipped']} | | | | | | |")
            continue
        pipe, run = row["pipeline"], row.get("training")
        lines.append(f"{head} {pipe['load_seconds']:,.0f} s | {pipe['epoch_seconds']:,.1f} s | "
                     f"{pipe['images_per_second']:,.0f} | {pipe['peak_rss_mb']:,.0f} MiB "
                     f"(+{pipe['peak_rss_mb'] - pipe['rss_mb_tensorflow_loaded']:,.0f}) | "
                     + (f"{run['train_images_per_second']:,.0f} | {run['peak_rss_mb']:,.0f} MiB | "
                        f"{run['wall_seconds']:,.0f} s |" if run else "not run at this size | | |"))
    lines.append("")
    by = {(r["photos"], r["stream"]): r for r in measured}
    both = sorted(count for count in {r["photos"] for r in measured}
                  if (count, "true") in by and (count, "false") in by)
    findings = []
    for count in both:
        memory, streamed = by[(count, "false")], by[(count, "true")]
        finding = (f"at {count:,} photos ({memory['decoded_mb']:,.0f} MiB decoded), streaming peaks at "
                   f"{streamed['pipeline']['peak_rss_mb']:,.0f} MiB against {memory['pipeline']['peak_rss_mb']:,.0f} "
                   "MiB in memory (pipeline)")
        if "training" in streamed and "training" in memory:
            speed = streamed["training"]["train_images_per_second"] / memory["training"]["train_images_per_second"]
            finding += (f", {streamed['training']['peak_rss_mb']:,.0f} against "
                        f"{memory['training']['peak_rss_mb']:,.0f} MiB (training), and trains at {speed:.2f}× "
                        "the in-memory speed")
        else:
            finding += (f", and reads at {streamed['pipeline']['images_per_second']:,.0f} against "
                        f"{memory['pipeline']['images_per_second']:,.0f} images/s")
        findings.append(finding)
    if findings:
        lines += ["In short: " + "; ".join(findings) + ".", ""]
    streamed_rows = [by[key] for key in sorted(by) if key[1] == "true"]
    if len(streamed_rows) > 1:
        low, high = streamed_rows[0], streamed_rows[-1]
        lines += [f"Streamed, the peak grows from {low['pipeline']['peak_rss_mb']:,.0f} MiB at {low['photos']:,} "
                  f"photos to {high['pipeline']['peak_rss_mb']:,.0f} MiB at {high['photos']:,} (the file lists and a "
                  "few batches); decoded into memory it grows with the photos, about "
                  f"{PHOTO_SIZE * PHOTO_SIZE * 3 / 1024:.0f} KiB each and several copies of them while they are "
                  "stacked.", ""]
    starts = [f"{by[(count, 'true')]['pipeline']['load_seconds']:,.0f} s streamed against "
              f"{by[(count, 'false')]['pipeline']['load_seconds']:,.0f} s in memory at {count:,} photos"
              for count in both]
    from train.data import STREAM_ABOVE_BYTES  # --stream auto's threshold

    threshold = STREAM_ABOVE_BYTES // (PHOTO_SIZE * PHOTO_SIZE * 3)
    lines += ["What streaming costs: a streamed epoch decodes every training photo again, where the in-memory one "
              "reads arrays; with the default model the decoding shares the cores with the training step (the "
              "training columns show how much of it remains visible). And a streamed run still decodes every photo "
              "once at the start, to find the unreadable files and split exactly as the in-memory loader does"
              + (" (the pipeline's load: " + "; ".join(starts) + ")" if starts else "")
              + f". `--stream auto` streams above {STREAM_ABOVE_BYTES / 2**30:g} GiB of decoded images (about "
              f"{threshold:,} photos of {PHOTO_SIZE}×{PHOTO_SIZE} RGB) and always under `--strategy multi-worker`.",
              ""]
    return lines


def workers_markdown(found: dict, cores: int) -> list[str]:
    median = found["median"]
    recipe = " ".join(found["recipe"])
    names = {"one_process": "one process (TensorFlow's threads: every core)",
             "one_process_one_thread": "one process, one thread",
             "two_workers": "two workers (`--strategy multi-worker`), one thread each"}
    lines = ["### Two training workers on one machine", "",
             f"`python -m train {recipe}` (the default model on a Fashion-MNIST slice), in one process and as two "
             "`--strategy multi-worker` workers on loopback (`train/testing.py`'s `TrainingWorkers`: each its own "
             "TF_CONFIG, one intra-op thread each so that the two share the cores rather than fight over them). "
             f"Images/s from the chief's metrics.json (every training image of every epoch / seconds of `fit`); "
             f"{found['rounds']} run(s) of each setup taken in turn, the median shown. The workers run with "
             "TensorFlow's oneDNN kernels off (train/cli.py: their convolution fails on the empty batches of uneven "
             "shards), the single processes with them on, as each runs by default.", "",
             "| setup | images/s | fit | process | test accuracy |", "| --- | --- | --- | --- | --- |"]
    for name in ("one_process", "one_process_one_thread", "two_workers"):
        run = median[name]
        lines.append(f"| {names[name]} | {run['train_images_per_second']:,.0f} | {run['training_seconds']:,.1f} s | "
                     f"{run['wall_seconds']:,.0f} s | {run['test_accuracy'] * 100:.2f} % |")
    ratio, per_thread = found["two_workers_vs_one_process"], found["two_workers_vs_one_thread"]
    if ratio < 0.95:
        verdict = (f"{(1 - ratio) * 100:.0f} % slower. They are not faster: one process already uses every core, and "
                   "the two workers split the same cores, then add an all-reduce of every gradient at every step")
    elif ratio < 1.1:
        verdict = ("no faster (within this machine's drift): one process already uses every core, and the two "
                   "workers split the same cores, then add an all-reduce of every gradient at every step")
    else:
        verdict = ("faster in this measurement; with one process already on every core, look for a cause before "
                   "counting on it (this machine's speed drifts by up to 2×)")
    lines += ["", f"Two workers on {cores} cores train at {ratio:.2f}× the speed of one process: {verdict}. Against "
              f"one process of one thread (what each worker has) they reach {per_thread:.2f}× (2× would be perfect "
              "scaling): what a second worker gives when it brings its own core, as a second machine would, here "
              "without a network in between. Multi-worker training is for more machines, not for more processes "
              "on one.", ""]
    return lines


SERVING_NAMES = {"one_replica_direct": "one replica, direct", "one_replica_haproxy": "one replica behind HAProxy",
                 "two_replicas_haproxy": "two replicas behind HAProxy",
                 "one_replica_double_workers": "one replica with twice the workers, direct"}


def serving_markdown(found: dict) -> list[str]:
    settings, model = found["settings"], found["model"]
    workers = settings["replica_workers"]
    by = {(r["setup"], r["concurrency"]): r for r in found["runs"]}
    concurrencies = sorted({r["concurrency"] for r in found["runs"]})
    tiny = model.get("tiny")
    lines = ["### Serving: a second replica behind HAProxy", "",
             f"gunicorn replicas of the service (`serve/testing.py`), each with {workers} worker"
             f"{'s' if workers != 1 else ''} of {settings['threads']} threads, serving "
             + ("the tests' tiny linear model (tests/tiny_model.py, ONNX: --quick had no exported model)"
                if tiny else f"`{model['name']}` v{model['version']} (`{model['format']}`)")
             + "; HAProxy with the project's `deploy/haproxy/haproxy.cfg` (health checks, whole requests "
             f"buffered, leastconn). `{settings['wrk']}` POSTs the 28×28 PNG as a multipart upload "
             f"(`bench/wrk_multipart.lua`); {settings['rounds']} slice(s) per setup taken in turn, the median slice "
             f"shown. wrk, HAProxy and the replicas all run on the same {settings['cores']} cores.", "",
             "| setup | gunicorn workers | c | requests/s | p50 | p99 | vs one replica direct |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    counts = {"one_replica_direct": workers, "one_replica_haproxy": workers, "two_replicas_haproxy": 2 * workers,
              "one_replica_double_workers": 2 * workers}
    for connections in concurrencies:
        direct = by[("one_replica_direct", connections)]["requests_per_second"]
        for name, label in SERVING_NAMES.items():
            run = by[(name, connections)]
            lines.append(f"| {label} | {counts[name]} | {connections} | {run['requests_per_second']:,.0f} | "
                         f"{run['p50_ms']:.1f} ms | {run['p99_ms']:.1f} ms | "
                         f"{run['requests_per_second'] / direct:.2f}× |")
    top = concurrencies[-1]
    rps = {name: by[(name, top)]["requests_per_second"] for name in SERVING_NAMES}
    proxied = rps["one_replica_haproxy"] / rps["one_replica_direct"]
    lines += ["", f"At c={top}: HAProxy in front of one replica gives {proxied:.2f}× its direct rate ("
              + ("what the proxy's hop and its CPU, taken from the same cores, cost" if proxied < 0.97
                 else "no cost visible at this load") + "); two replicas behind it give "
              f"{rps['two_replicas_haproxy'] / rps['one_replica_haproxy']:.2f}× one replica behind it, and "
              f"{rps['two_replicas_haproxy'] / rps['one_replica_double_workers']:.2f}× one replica with the same "
              f"{2 * workers} workers, direct. On one machine a second replica adds workers, not cores; what it buys "
              "is a replica that can die or be restarted without a failed request (tests/test_haproxy.py) and, on a "
              "second machine, that machine's cores. Requests each replica answered through HAProxy (all "
              "concurrencies and rounds): "
              + ", ".join(f"{name} {count:,}" for name, count in found.get("requests_per_replica", {}).items())
              + ".", ""]
    return lines


# --- main ---------------------------------------------------------------------------------------------------------

def counts(text: str, least: int = 1) -> list[int]:
    """Comma-separated whole numbers (5000,50000 or 5_000,50_000), each at least `least`."""
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, not {text!r}") from None
    if not values or min(values) < least:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers of at least {least}, not {text!r}")
    return values


def photo_counts(text: str) -> list[int]:
    return counts(text, least=30)  # 3 photos per class at least: one each for training, validation and test


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json",
                        help="the results (JSON); default bench/results/scale.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short runs: a smoke test")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which parts, comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--train-photos-up-to", type=int, default=5000,
                        help="also a real `python -m train` epoch on folders up to this many photos (default 5000)")
    parser.add_argument("--photos", type=photo_counts, help=f"folder sizes (default {FULL['photos']}; quick "
                        f"{QUICK['photos']})")
    parser.add_argument("--photos-dir", type=Path, default=Path(tempfile.gettempdir()) / "pocketcnn-scale-photos",
                        help="where the generated photo folders are kept and reused")
    parser.add_argument("--seconds", type=int, help=f"wrk duration of one slice (default {FULL['seconds']}; "
                        f"quick {QUICK['seconds']})")
    parser.add_argument("--rounds", type=int, help=f"wrk slices per serving setup (default {FULL['rounds']})")
    parser.add_argument("--concurrencies", type=counts,
                        help=f"wrk connections (default {FULL['concurrencies']}; quick {QUICK['concurrencies']})")
    parser.add_argument("--train-limit", type=int, help=f"Fashion-MNIST training images for the workers part "
                        f"(default {FULL['train_limit']})")
    parser.add_argument("--epochs", type=int, help=f"epochs of the workers part (default {FULL['epochs']})")
    parser.add_argument("--training-rounds", type=int, help="runs of each training setup, taken in turn "
                        f"(default {FULL['training_rounds']})")
    parser.add_argument("--models", default=str(ROOT / "bench" / "models"),
                        help="model repository with a published version (default bench/models, which `make bench` "
                             "exports); `tiny`: the tests' tiny linear model (--quick's fallback when there is none)")
    parser.add_argument("--replica-workers", type=int, default=1, help="gunicorn workers of each replica")
    parser.add_argument("--threads", type=int, default=4, help="threads of each gunicorn worker")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds any one measured process may take")
    parser.add_argument("--measure-pipeline", metavar="DATA_DIR", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--stream", default="false", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.measure_pipeline:
        print(RESULT_PREFIX + json.dumps(measure_input_pipeline(args.measure_pipeline, args.stream)), flush=True)
        return {}
    sizes = QUICK if args.quick else FULL
    photos = args.photos or photo_counts(sizes["photos"])
    seconds, rounds = args.seconds or sizes["seconds"], args.rounds or sizes["rounds"]
    concurrencies = args.concurrencies or counts(sizes["concurrencies"])
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))} (choose from {', '.join(PARTS)})")
    models, model_format, tiny = Path(args.models), None, args.models == "tiny"
    if "serving" in parts and not tiny and not has_published_version(models):
        if not args.quick:
            parser.error(f"--models: no published model version in {models} (export one first, e.g. `make bench` "
                         "makes bench/models, or pass --models tiny for the tests' tiny model)")
        tiny = True
    if "serving" in parts and not (shutil.which("wrk") and shutil.which("haproxy")):
        parser.error("the serving part needs wrk and haproxy (scripts/install-system-packages.sh test)")

    work = Path(tempfile.mkdtemp(prefix="pocketcnn-scale-"))
    (work / "logs").mkdir()
    command = "python -m bench.scale_bench" + (" --quick" if args.quick else "") + (
        f" --photos {','.join(map(str, photos))}" if args.photos else "")
    report = {"date": date.today().isoformat(), "cores": os.cpu_count(), "cpu": cpu_model(), "quick": args.quick,
              "command": command, "python": platform.python_version(), "logs": str(work / "logs")}
    started = time.monotonic()
    print(f"Beyond one machine: {', '.join(parts)} (logs in {work / 'logs'})", flush=True)

    def save():
        report["seconds"] = round(time.monotonic() - started)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    if "folders" in parts:
        print(f"Folders: {', '.join(f'{n:,}' for n in photos)} photos, streamed and in memory", flush=True)
        report["folders"] = bench_folders(photos, args.photos_dir, work, args.timeout, args.train_photos_up_to)
        save()
    if "workers" in parts:
        print("Training: two workers against one process", flush=True)
        report["workers"] = bench_workers(args.train_limit or sizes["train_limit"], args.epochs or sizes["epochs"],
                                          args.training_rounds or sizes["training_rounds"], work, args.timeout)
        save()
    if "serving" in parts:
        print("Serving: one and two replicas behind HAProxy", flush=True)
        if tiny:
            models, model_format = tiny_repository(work / "tiny-models")
        report["serving"] = bench_serving(models, model_format, args.replica_workers, args.threads, seconds, rounds,
                                          concurrencies, work)
        report["serving"]["model"]["tiny"] = tiny
        save()
    shutil.rmtree(work / "runs", ignore_errors=True)
    print(f"Done in {time.monotonic() - started:.0f} s: {args.out}", flush=True)
    return report


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main(sys.argv[1:])
