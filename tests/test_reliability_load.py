"""Load and faults against a real gunicorn (two workers) on loopback, bounded in requests and time.

(a) 10 000 requests at concurrency 64: zero failures; every worker's memory sampled all along, and
    grows less than 10 % from the first thousand requests to the last.
(b) SIGKILL of a worker under load: gunicorn replaces it; only requests in flight on it fail (never
    an HTTP error, never more than the concurrency); the replacement takes no request before its
    model is loaded; times to replacement and to a loaded model are measured.
(c) Start-up with a missing, truncated or doctored model file: a clear log line, /readyz 503 with the
    reason, /predict 503 - never an answer from a broken model.
(d) A broken new version appearing while serving under load: every request still answered by the
    working version; the refusal in the log, in /model and in pocketcnn_model_load_failures_total.

    .venv/bin/python -m pytest -q tests/test_reliability_load.py -s
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from helpers import AnswerCounter, copy_version, doctor_weights, open_sockets, png_bytes, served_artifact, wait_until
from tiny_model import TINY_FORMAT

from clients.loadgen import format_report, run_load
from clients.predict import encode_multipart, read_image_part
from contract import read_manifest
from contract.files import sha256_file
from serve.testing import GunicornServer, http_get

pytestmark = pytest.mark.slow

LOG_PROBLEMS = ("WORKER TIMEOUT", "Traceback", "Error handling request", "Exception in worker")


# --- helpers -----------------------------------------------------------------------------------------
def post_png(url: str, png: bytes, timeout: float = 10) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/predict", data=png, method="POST", headers={"Content-Type": "image/png"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())

def rss_kib(pid: int) -> int | None:
    """Resident memory of a process, from /proc/<pid>/status (kB)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def metric(url: str, name: str) -> float:
    text = http_get(url + "/metrics")[1].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def assert_clean_log(server: GunicornServer) -> None:
    log = server.log_path.read_text(errors="replace")
    for problem in LOG_PROBLEMS:
        assert problem not in log, f"gunicorn log shows {problem!r}:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def photo_body(fashion_mnist_test):
    """A real Fashion-MNIST image as the multipart body the Python client sends."""
    body, content_type = encode_multipart([read_image_part(png_bytes(fashion_mnist_test[0][0]))])
    return body, content_type


def start_server(repository: Path, tmp_path: Path, **env) -> GunicornServer:
    """gunicorn serving the tiny model (the service's robustness does not depend on what the model computes)."""
    settings = {"POCKETCNN_TEST_LOG": str(tmp_path / "gunicorn.log"), "POCKETCNN_MODEL_FORMAT": TINY_FORMAT,
                **{k: str(v) for k, v in env.items()}}
    return GunicornServer(repository, env=settings)


# --- (a) 10 000 requests at concurrency 64 ---------------------------------------------------------------------

class MemorySampler:
    """Samples every worker's RSS every `interval` seconds in a thread."""

    def __init__(self, server: GunicornServer, interval: float = 0.05):
        self.server, self.interval = server, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            values = [rss_kib(pid) for pid in self.server.worker_pids()]
            if values and None not in values:
                self.samples.append(sum(values))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_ten_thousand_requests_at_concurrency_64_none_fails_and_memory_stays_flat(tiny_repository, photo_body,
                                                                                 tmp_path):
    body, content_type = photo_body
    server = start_server(tiny_repository, tmp_path, POCKETCNN_POLL_SECONDS=0).start()
    try:
        workers = server.wait_every_worker_serving()
        batches, per_batch, concurrency = 10, 1000, 64
        reports, memory = [], []  # memory: mean total worker RSS (kB) while each thousand ran
        started = time.perf_counter()
        for _ in range(batches):
            with MemorySampler(server) as sampler:
                reports.append(run_load(server.url, body, content_type, per_batch, concurrency, timeout=30))
            memory.append(sum(sampler.samples) / len(sampler.samples))
        seconds = time.perf_counter() - started
        requests = sum(r["requests"] for r in reports)
        failed = sum(r["failed"] for r in reports)
        growth = (memory[-1] - memory[0]) / memory[0] * 100
        worst_p99 = max(r["latency_ms"]["p99"] for r in reports)
        print(f"\n(a) {requests} requests at concurrency {concurrency} in {seconds:.1f} s "
              f"({requests / seconds:.0f} req/s): ok {sum(r['ok'] for r in reports)}, failed {failed}; "
              f"worst p99 of a thousand {worst_p99} ms")
        print(f"    worker RSS (both workers, MiB) per thousand: {', '.join(f'{m / 1024:.1f}' for m in memory)}; "
              f"first -> last thousand {growth:+.2f} %")
        print("    last thousand: " + format_report(reports[-1]).replace("\n", "\n    "))
        assert requests == batches * per_batch
        assert failed == 0, [r["failures"] for r in reports if r["failed"]]
        assert growth < 10, f"worker memory grew {growth:.1f} % from the first to the last thousand requests"
        assert server.worker_pids() == workers, "the same two workers served every request"
        assert metric(server.url, 'pocketcnn_requests_total{endpoint="/predict",method="POST",status="200"}') \
            == requests, "every request reached the model and was counted"
        assert_clean_log(server)
    finally:
        server.stop()


# --- (b) SIGKILL of a worker under load --------------------------------------------------------------------------

def fresh_connection_hammer(url: str, png: bytes, stop: threading.Event, outcomes: Counter, lock: threading.Lock):
    """One request per new TCP connection: connections a fresh worker accepts show whether it answers
    before its model is loaded (a keep-alive client would stay on the surviving worker)."""
    host, port = url.removeprefix("http://").split(":")
    while not stop.is_set():
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request("POST", "/predict", body=png, headers={"Content-Type": "image/png",
                                                                      "Connection": "close"})
            response = connection.getresponse()
            response.read()
            outcome = response.status
        except (OSError, http.client.HTTPException) as err:
            outcome = type(err).__name__
        finally:
            connection.close()
        with lock:
            outcomes[outcome] += 1


def served_by(server: GunicornServer, pid: int) -> int:
    """Requests one worker has answered so far: the samples its own Prometheus file holds."""
    from prometheus_client.mmap_dict import MmapedDict

    total = 0
    for path in Path(server.metrics_dir).glob(f"counter_{pid}.db"):
        values = MmapedDict.read_all_values_from_file(str(path))
        total += sum(value for key, value, *_ in values if '"pocketcnn_images_total"' in key)
    return int(total)


def test_a_worker_killed_under_load_is_replaced_and_only_its_requests_in_flight_fail(tiny_repository, photo_body,
                                                                                     fashion_mnist_test, tmp_path):
    body, content_type = photo_body
    png = png_bytes(fashion_mnist_test[0][0])
    stop = threading.Event()
    server = start_server(tiny_repository, tmp_path, POCKETCNN_POLL_SECONDS=0).start()
    try:
        before = server.wait_every_worker_serving()
        victim = before[0]
        concurrency, fresh_threads = 32, 8
        listener = open_sockets(victim)
        report: dict = {}
        answers = AnswerCounter()
        load = threading.Thread(target=lambda: report.update(run_load(server.url, body, content_type, 8000,
                                                                      concurrency, timeout=30, on_answer=answers)),
                                daemon=True)
        lock, fresh = threading.Lock(), Counter()
        hammers = [threading.Thread(target=fresh_connection_hammer, args=(server.url, png, stop, fresh, lock),
                                    daemon=True) for _ in range(fresh_threads)]
        load.start()
        for hammer in hammers:
            hammer.start()
        wait_until(lambda: answers.count >= 500 and sum(fresh.values()) >= 50, what="the load under way")
        held = open_sockets(victim) - listener
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replaced = loaded = None
        deadline = killed_at + 30
        while loaded is None and time.monotonic() < deadline:
            new = [pid for pid in server.worker_pids() if pid not in before]
            if new and replaced is None:
                replaced = time.monotonic() - killed_at
            if new and new[0] in server.serving_pids():
                loaded = time.monotonic() - killed_at
            time.sleep(0.01)
        status, answer = http_get(server.url + "/readyz")
        ready = time.monotonic() - killed_at
        # Keep the fresh connections coming until the replacement has answered a share of them.
        replacement = next(pid for pid in server.worker_pids() if pid not in before)
        served_before = served_by(server, replacement)
        wait_until(lambda: served_by(server, replacement) >= served_before + 20, what="the replacement answering")
        stop.set()
        for hammer in hammers:
            hammer.join()
        load.join(timeout=120)
        after = server.worker_pids()
        fresh_failed = {k: v for k, v in fresh.items() if k != 200}
        print(f"\n(b) SIGKILL of worker {victim} (holding {held} client connections) under load: replaced after "
              f"{replaced:.2f} s, replacement's model loaded after {loaded:.2f} s, "
              f"/readyz {status} after {ready:.2f} s")
        print(f"    keep-alive load: {report['requests']} requests at concurrency {concurrency}, "
              f"failed {report['failed']} {report['failures']}")
        print(f"    new connection per request ({fresh_threads} clients): {sum(fresh.values())} requests, "
              f"failed {sum(fresh_failed.values())} {fresh_failed}")
        assert replaced is not None and loaded is not None, "gunicorn replaced the worker and it loaded the model"
        assert loaded < 10, "ready again within seconds"
        assert status == 200 and json.loads(answer)["status"] == "ready"
        assert len(after) == 2 and victim not in after
        # Only requests in flight on the killed worker fail, as broken connections - never an HTTP error.
        assert report["requests"] == 8000 and report["failed"] <= concurrency, report["failures"]
        assert not [k for k in report["failures"] if k.startswith("HTTP")], report["failures"]
        assert sum(fresh_failed.values()) <= fresh_threads, fresh_failed
        assert report["failed"] + sum(fresh_failed.values()) <= held + fresh_threads, \
            "no more failures than connections the killed worker held (plus ones being opened at that instant)"
        assert not [k for k in fresh_failed if isinstance(k, int)], \
            f"the replacement answered before its model was loaded: {fresh_failed}"
        for problem in ("WORKER TIMEOUT", "Traceback"):
            assert problem not in server.log_path.read_text(errors="replace")
    finally:
        stop.set()
        server.stop()


# --- (c) start-up with a damaged model file ----------------------------------------------------------------------

def damage(version: Path, how: str) -> None:
    key, file = served_artifact(version)
    model_file = version / file
    if how == "missing":
        model_file.unlink()
    elif how == "truncated":
        model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 3])
    elif how == "doctored":
        # Change the weights and re-sign the manifest: only the self-check can tell.
        doctor_weights(model_file)
        manifest = read_manifest(version)
        manifest["artifacts"][key]["sha256"] = sha256_file(model_file)
        (version / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how,reason", [
    ("missing", "is missing"),
    ("truncated", "does not match its manifest"),
    ("doctored", "self-check failed"),
])
def test_start_up_with_a_damaged_model_file_is_never_ready(tiny_version, fashion_mnist_test, tmp_path, how,
                                                           reason):
    repository = tmp_path / "models"
    version = copy_version(tiny_version, repository, 1)
    damage(version, how)
    server = start_server(repository, tmp_path, POCKETCNN_POLL_SECONDS=0).start(wait="/healthz")
    try:
        deadline = time.monotonic() + 20
        while len([line for line in server.output().splitlines() if "not serving fashion_mnist/1" in line]) < 2:
            assert time.monotonic() < deadline, f"both workers tried version 1 within 20 s:\n{server.output()}"
            time.sleep(0.1)
        status, body = http_get(server.url + "/readyz")
        message = json.loads(body)["error"]["message"]
        predict_status, answer = post_png(server.url, png_bytes(fashion_mnist_test[0][0]))
        log_lines = [line for line in server.output().splitlines() if "not serving fashion_mnist/1" in line]
        print(f"\n(c) {how}: /readyz {status} ({message[:160]}...); /predict {predict_status}; "
              f"log: {log_lines[0][:160] if log_lines else None}")
        assert status == 503 and reason in message
        assert predict_status == 503 and answer["error"]["code"] == "not_ready"
        assert len(log_lines) == 2, "each worker says why, once"
        assert all(reason in line for line in log_lines)
        assert server.process.poll() is None, "the service stays up (alive, not ready) and keeps polling"
        assert http_get(server.url + "/healthz")[0] == 200
        assert metric(server.url, "pocketcnn_model_load_failures_total") == 2
    finally:
        server.stop()


# --- (d) a broken new version appearing while serving under load -----------------------------------------------

def test_a_broken_new_version_appearing_under_load_is_refused_and_the_working_one_keeps_serving(
        tiny_version, photo_body, tmp_path):
    body, content_type = photo_body
    repository = tmp_path / "models"
    copy_version(tiny_version, repository, 1, accuracy=0.80)
    server = start_server(repository, tmp_path, POCKETCNN_POLL_SECONDS=0.3).start()
    try:
        report: dict = {}
        answers = AnswerCounter()
        load = threading.Thread(target=lambda: report.update(run_load(server.url, body, content_type, 4000, 16,
                                                                      timeout=30, on_answer=answers)), daemon=True)
        load.start()
        wait_until(lambda: answers.count >= 200, what="the load under way")
        staging = repository / "fashion_mnist" / ".staging-broken"
        shutil.copytree(tiny_version, staging)
        key, file = served_artifact(staging)
        (staging / file).write_bytes(b"\x00" * 4096)  # garbage where the model should be
        manifest = read_manifest(staging)
        manifest["version"] = 2
        manifest["artifacts"][key]["accuracy"] = 0.99  # better on paper: it would be preferred
        (staging / "manifest.json").write_text(json.dumps(manifest))
        os.rename(staging, repository / "fashion_mnist" / "2")
        appeared = time.monotonic()
        while metric(server.url, 'pocketcnn_model_load_failures_total{name="fashion_mnist",version="2"}') < 2:
            assert time.monotonic() - appeared < 20, "both workers tried version 2 within 20 s"
            time.sleep(0.1)
        refused_after = time.monotonic() - appeared
        load.join(timeout=120)
        status, ready = http_get(server.url + "/readyz")
        model = json.loads(http_get(server.url + "/model")[1])
        log_lines = [line for line in server.output().splitlines() if "not serving fashion_mnist/2" in line]
        print(f"\n(d) broken version 2 published under load: refused by both workers within {refused_after:.2f} s; "
              f"{report['requests']} requests, failed {report['failed']}; still serving v"
              f"{json.loads(ready)['model']['version']}; log: {log_lines[0][:150] if log_lines else None}")
        assert report["failed"] == 0 and report["ok"] == 4000, report["failures"]
        assert status == 200 and json.loads(ready)["model"]["version"] == 1
        assert "fashion_mnist/2" in model["refused_versions"] and model["served"]["version"] == 1
        assert log_lines and "does not match its manifest" in log_lines[0]
        assert metric(server.url, "pocketcnn_model_swaps_total") == 0
        # Unchanged since, the broken version is not retried on every poll (the log says it once per worker):
        # watch three more polls (every 0.3 s).
        time.sleep(1.0)
        assert len([line for line in server.output().splitlines() if "not serving fashion_mnist/2" in line]) == 2
        assert_clean_log(server)
    finally:
        server.stop()
