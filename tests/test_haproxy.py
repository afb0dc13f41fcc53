"""Two service instances on loopback behind HAProxy (Debian's package) with the project's own configuration,
deploy/haproxy/haproxy.cfg: health checks on /readyz, requests held whole (option http-buffer-request) and sent
again to the other replica when theirs fails (retry-on, redispatch).

- uploads as big as the ones the benchmark sends (the 43 kB 640x480 JPEG) fit HAProxy's buffer; a bigger one is
  still answered;
- a new version published to the shared repository is picked up by both replicas;
- a replica killed with SIGKILL under load costs no request;
- on SIGTERM a replica answers /readyz with 503 and keeps serving (drain), then stops: a rolling restart of both
  replicas under load costs no request;
- a replica that cannot load any working version stays out of rotation while the other serves.

    .venv/bin/python -m pytest -q tests/test_haproxy.py -s
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import AnswerCounter, copy_version, doctor_weights, encode, photo_like, served_artifact, wait_until
from PIL import Image
from tiny_model import TINY_FORMAT

from clients.loadgen import run_load
from clients.predict import encode_multipart
from serve.testing import GunicornServer, HAProxy, http_get

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("haproxy") is None,
                                 reason="HAProxy is not installed: scripts/install-system-packages.sh test")]

DRAIN_SECONDS = 2  # above HAProxy's time to take a replica out (2 failed checks 0.5 s apart), as the config says
REPLICA_ENV = {"POCKETCNN_MODEL_FORMAT": TINY_FORMAT, "POCKETCNN_DRAIN_SECONDS": str(DRAIN_SECONDS),
               "POCKETCNN_POLL_SECONDS": "0.5"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, bytes]:
    """The benchmark's two photos (a 28x28 PNG, the 43 kB 640x480 JPEG), and a 640x480 PNG of 0.9 MB."""
    from bench.serve_bench import make_images

    found = {name: path.read_bytes() for name, path in make_images(tmp_path_factory.mktemp("images")).items()}
    noisy = np.asarray(photo_like(640, 480), dtype=np.int16) + np.random.default_rng(0).integers(-20, 20, (480, 640, 3))
    found["png_640x480"] = encode(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), "PNG")
    return found


@pytest.fixture(scope="module")
def uploads(photos) -> dict[str, tuple[bytes, str]]:
    """(body, content type) of the benchmark's photos as multipart forms, as browsers and clients.predict send them."""
    return {name: encode_multipart([(f"{name}.{name[:3]}", "application/octet-stream", data)])
            for name, data in photos.items() if name != "png_640x480"}


@pytest.fixture(scope="module")
def repository(tiny_repository, tmp_path_factory) -> Path:
    """The replicas' shared model repository (a copy of the tiny model's: a test publishes into it)."""
    shared = tmp_path_factory.mktemp("shared") / "models"
    shutil.copytree(tiny_repository, shared)
    return shared


def start_replica(repository: Path, folder: Path, name: str, port: int | None = None) -> GunicornServer:
    """One instance of the service: gunicorn with one worker (two instances on a 2-core machine)."""
    return GunicornServer(repository, env=REPLICA_ENV, port=port, workers=1,
                          log_path=folder / f"{name}-{time.monotonic_ns()}.log").start()


@pytest.fixture(scope="module")
def replicas(repository, tmp_path_factory):
    """Two replicas for the tests below, which run in file order: the last one kills a replica, the one before
    replaces both (each test leaves two replicas up for the next)."""
    folder = tmp_path_factory.mktemp("replicas")
    started = [start_replica(repository, folder, "replica1"), start_replica(repository, folder, "replica2")]
    yield started
    for replica in started:
        replica.stop(signal.SIGINT)  # at once: SIGTERM would drain first


@pytest.fixture(scope="module")
def balancer(replicas, tmp_path_factory):
    ports = [replica.port for replica in replicas]
    with HAProxy([f"127.0.0.1:{port}" for port in ports],
                 log_path=tmp_path_factory.mktemp("haproxy") / "haproxy.log") as proxy:
        yield proxy


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict, dict]:
    """(status, JSON answer, headers) of one POST /predict on a fresh connection."""
    where = url.split("//", 1)[1]
    host, port = where.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        connection.close()


def load_in_background(url: str, body: bytes, content_type: str, requests: int, concurrency: int = 8):
    """clients.loadgen's load (a fixed number of requests) in a thread; the report fills in when it is done."""
    report: dict = {}
    answers = AnswerCounter()
    thread = threading.Thread(target=lambda: report.update(run_load(url, body, content_type, requests, concurrency,
                                                                    timeout=30, on_answer=answers)), daemon=True)
    thread.start()
    return thread, report, answers


class SteadyLoad:
    """Clients posting one photo over kept-alive connections until stopped (a restart takes as long as it
    takes), each failure kept with its cause: an HTTP status other than 200, or the exception."""

    def __init__(self, url: str, body: bytes, content_type: str, concurrency: int = 8):
        where = url.split("//", 1)[1]
        self.host, self.port = where.split(":")[0], int(where.split(":")[1])
        self.body, self.content_type = body, content_type
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.answered, self.failures = 0, []
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(concurrency)]

    def client(self) -> None:
        connection = None
        while not self.stopping.is_set():
            connection = connection or http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                connection.request("POST", "/predict", body=self.body, headers={"Content-Type": self.content_type})
                response = connection.getresponse()
                response.read()
                failure = None if response.status == 200 else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as err:
                failure = type(err).__name__
                connection.close()
                connection = None
            with self.lock:
                self.answered += failure is None
                if failure:
                    self.failures.append(failure)
        if connection:
            connection.close()

    def __enter__(self) -> "SteadyLoad":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)


def test_uploads_up_to_the_benchmark_photo_pass_through_the_buffer_and_bigger_ones_too(balancer, replicas, uploads,
                                                                                     photos):
    for name, (body, content_type) in uploads.items():
        status, through, _ = post(balancer.url, body, content_type)
        direct = post(replicas[0].url, body, content_type)[1]
        assert status == 200, through
        assert through["predictions"] == direct["predictions"], name
        print(f"\n{name}: {len(body):,} bytes through HAProxy, same answer as a replica's")
    jpeg, content_type = uploads["jpeg_640x480"]
    assert len(jpeg) < 65536 - 1024, "the JPEG must fit in tune.bufsize minus tune.maxrewrite, as the config says"
    # Beyond the buffer: forwarded as it arrives (it could not be sent again), and answered all the same.
    big_body, big_type = encode_multipart([("big.png", "image/png", photos["png_640x480"])])
    assert len(big_body) > 500_000
    status, answer, _ = post(balancer.url, big_body, big_type)
    assert status == 200, answer
    assert answer["predictions"] == post(replicas[1].url, big_body, big_type)[1]["predictions"]


def test_a_new_version_is_picked_up_by_both_replicas(balancer, replicas, repository, uploads):
    body, content_type = uploads["png_28x28"]
    assert {post(r.url, body, content_type)[1]["model"]["version"] for r in replicas} == {1}
    copy_version(repository / "fashion_mnist" / "1", repository, 2, accuracy=0.99)
    for replica in replicas:
        wait_until(lambda r=replica: all(post(r.url, body, content_type)[1]["model"]["version"] == 2
                                         for _ in range(6)),
                   timeout=30, what=f"every worker of {replica.url} serving version 2")
    versions = {post(balancer.url, body, content_type)[1]["model"]["version"] for _ in range(20)}
    assert versions == {2}
    served = {name: int(row["stot"]) for name, row in balancer.states().items()}
    assert all(count > 0 for count in served.values()), served  # both replicas answered through HAProxy


def test_sigterm_drains_first_and_a_rolling_restart_under_load_costs_no_request(balancer, replicas, repository,
                                                                                  uploads, tmp_path):
    """Each replica in turn: SIGTERM, /readyz 503 at once while requests are still answered, out of HAProxy's
    rotation, stopped; a new one started on its address, back in rotation."""
    body, content_type = uploads["png_28x28"]
    with SteadyLoad(balancer.url, body, content_type) as load:
        wait_until(lambda: load.answered >= 300, what="the load under way")
        for index in (0, 1):
            old = replicas[index]
            name = f"replica{index + 1}"
            os.kill(old.process.pid, signal.SIGTERM)
            # Draining: not ready, but still answering, and telling kept-alive clients to go elsewhere.
            wait_until(lambda o=old: http_get(o.url + "/readyz")[0] == 503, timeout=5, what="/readyz 503 at once")
            assert json.loads(http_get(old.url + "/readyz")[1])["status"] == "draining"
            status, _, headers = post(old.url, body, content_type)
            assert status == 200 and headers.get("Connection") == "close", headers
            balancer.wait_for({name: "DOWN"}, timeout=DRAIN_SECONDS + 5)
            old.process.wait(DRAIN_SECONDS + 15)  # then it stops by itself
            replicas[index] = start_replica(repository, tmp_path, name, port=old.port)  # its successor, same address
            balancer.wait_for({name: "UP"})
            answered = load.answered
            wait_until(lambda a=answered: load.answered >= a + 200, what=f"answers after {name} was replaced")
    print(f"\nrolling restart of both replicas under load: {load.answered} answered, {len(load.failures)} failed "
          f"{sorted(set(load.failures))}")
    assert load.failures == []


def test_a_replica_killed_with_sigkill_under_load_costs_no_request(balancer, replicas, uploads):
    body, content_type = uploads["jpeg_640x480"]
    thread, report, answers = load_in_background(balancer.url, body, content_type, 1500)
    wait_until(lambda: answers.count >= 300, what="the load under way")
    before = {name: int(row["stot"]) for name, row in balancer.states().items()}
    replicas[0].kill()
    killed_at = answers.count
    thread.join(timeout=180)
    assert not thread.is_alive(), "the load did not finish"
    balancer.wait_for({"replica1": "DOWN", "replica2": "UP"})
    after = {name: int(row["stot"]) for name, row in balancer.states().items()}
    print(f"\nSIGKILL of replica 1 after {killed_at} answers: {report['requests']} requests, failed {report['failed']} "
          f"{report['failures']}; requests per replica before {before}, after {after}")
    assert before["replica1"] > 0 and after["replica2"] > before["replica2"]
    assert report["requests"] == 1500 and report["failed"] == 0, report["failures"]


def test_sigterm_without_a_drain_stops_at_once(repository, tmp_path, uploads):
    """POCKETCNN_DRAIN_SECONDS=0 (the default): gunicorn's own graceful stop, no 503 phase."""
    server = GunicornServer(repository, env={**REPLICA_ENV, "POCKETCNN_DRAIN_SECONDS": "0"}, workers=1,
                            log_path=tmp_path / "nodrain.log").start()
    try:
        os.kill(server.process.pid, signal.SIGTERM)
        server.process.wait(15)
        assert "draining" not in server.output()
    finally:
        server.stop(signal.SIGINT)


def test_a_replica_without_a_loadable_version_stays_out_of_rotation(repository, tmp_path, uploads):
    body, content_type = uploads["png_28x28"]
    broken = tmp_path / "broken-models"
    shutil.copytree(repository, broken)
    for version in (broken / "fashion_mnist").iterdir():  # every version damaged: none can be served
        doctor_weights(version / served_artifact(version)[1])
    good = start_replica(repository, tmp_path, "good")
    bad = GunicornServer(broken, env=REPLICA_ENV, workers=1, log_path=tmp_path / "bad.log").start(wait="/healthz")
    proxy = HAProxy([f"127.0.0.1:{bad.port}", f"127.0.0.1:{good.port}"], log_path=tmp_path / "haproxy.log")
    try:
        bad.wait_every_worker(r"not ready: no version of 'fashion_mnist' passed its checks")
        proxy.start({"replica1": "DOWN", "replica2": "UP"})
        answers = [post(proxy.url, body, content_type) for _ in range(50)]
        assert [status for status, _, _ in answers] == [200] * 50
        states = proxy.states()
        assert int(states["replica1"]["stot"]) == 0 and int(states["replica2"]["stot"]) >= 50, states
        status, reason = http_get(bad.url + "/readyz")
        assert status == 503 and b"passed its checks" in reason and b"does not match its manifest" in reason
    finally:
        proxy.stop()
        good.stop(signal.SIGINT)
        bad.stop(signal.SIGINT)
