"""The service as it really runs: gunicorn with two workers on a loopback port (the tiny model, and the
session's real model for answers on real images)."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import open_sockets, png_bytes, server_side_connections
from tiny_model import TINY_FORMAT

from serve.testing import GunicornServer


def post(url: str, data: bytes, content_type: str, timeout: float = 30):
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "pocketcnn-test-boundary"
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.slow
def test_predict_through_gunicorn(live_server, fashion_mnist_test):
    x, y = fashion_mnist_test
    pngs = [png_bytes(image) for image in x[:20]]
    body, content_type = multipart([(f"{i}.png", p) for i, p in enumerate(pngs)])
    status, answer = post(live_server + "/predict", body, content_type)
    assert status == 200 and len(answer["results"]) == 20
    top = [r["predictions"][0]["index"] for r in answer["results"]]
    assert sum(t == label for t, label in zip(top, y[:20], strict=True)) >= 14  # a real model on real images
    status, single = post(live_server + "/predict", pngs[0], "image/png")
    assert status == 200 and single["predictions"][0]["index"] == top[0]
    b64 = json.dumps({"instances": [{"b64": base64.b64encode(pngs[0]).decode()}]}).encode()
    status, tf = post(live_server + "/v1/models/fashion_mnist:predict", b64, "application/json")
    assert status == 200 and max(range(10), key=lambda i: tf["predictions"][0][i]) == top[0]


def test_errors_through_gunicorn(tiny_server):
    url = tiny_server.url
    assert post(url + "/predict", b"hello", "text/plain")[0] == 415
    assert post(url + "/predict", b"not an image", "image/jpeg")[0] == 400
    status, answer = post(url + "/predict", b"\0" * (17 * 1024 * 1024), "image/png")
    assert status == 413 and answer["error"]["code"] == "request_entity_too_large"
    assert get(url + "/healthz")[0] == 200  # the workers are still fine


def test_concurrent_requests_all_succeed_and_metrics_add_up_across_workers(tiny_server, real_png):
    url = tiny_server.url

    def one(_):
        return post(url + "/predict", real_png, "image/png")[0]

    before = _predict_count(url)
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(300)))
    assert statuses == [200] * 300
    assert _predict_count(url) - before == 300  # both workers' samples are summed


def _predict_count(url: str) -> float:
    _, text = get(url + "/metrics")
    for line in text.decode().splitlines():
        if line.startswith('pocketcnn_requests_total{endpoint="/predict",method="POST",status="200"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_openapi_and_page_through_gunicorn(tiny_server):
    status, text = get(tiny_server.url + "/openapi.json")
    assert status == 200 and "/predict" in json.loads(text)["paths"]
    status, page = get(tiny_server.url + "/")
    assert status == 200 and b"<html" in page.lower()


def slow_copy(source, target):
    shutil.copy2(source, target)
    time.sleep(0.1)


def test_not_ready_until_a_version_is_published(tmp_path, tiny_version, real_png):
    server = GunicornServer(tmp_path, env={"POCKETCNN_POLL_SECONDS": "0.3", "POCKETCNN_MODEL_FORMAT": TINY_FORMAT})
    server.start(wait="/healthz")
    try:
        status, body = get(server.url + "/readyz")
        assert status == 503 and b"no model in" in body
        assert post(server.url + "/predict", real_png, "image/png")[0] == 503
        # Copied in by hand, file by file and slowly, as `cp -r` over a network share would: the workers poll
        # (every 0.3 s) while the folder is half there, fail to load it, and must load it once it is whole.
        shutil.copytree(tiny_version, tmp_path / "fashion_mnist" / "1", copy_function=slow_copy)
        server.wait_for("/readyz", timeout=30)
        # Each worker polls on its own. Waiting until each had the model file open was not enough (a worker
        # opens it before its self-check, and in attempts that fail): a CI run got a 503 after that wait.
        server.wait_every_worker_serving()
        statuses = {post(server.url + "/predict", real_png, "image/png")[0] for _ in range(20)}
        assert statuses == {200}
    finally:
        server.stop()


def test_kept_alive_connections_are_spread_evenly_over_the_workers(tiny_repository, real_png):
    """Clients that keep their connections open (browsers, load balancers) must not all land on one worker
    while the other idles: a new connection goes to the worker holding the fewest."""
    server = GunicornServer(tiny_repository, env={"POCKETCNN_MODEL_FORMAT": TINY_FORMAT}, workers=2).start()
    connections = []
    try:
        workers = server.wait_every_worker_serving()
        deadline = time.monotonic() + 15
        while server_side_connections(server.port):  # start()'s /readyz connections, until the workers close them
            assert time.monotonic() < deadline, "the workers closed the start-up connections"
            time.sleep(0.05)
        before = {pid: open_sockets(pid) for pid in workers}
        for held_each in (5, 10):
            for _ in range(10):  # one after another, each kept open after its answer
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                connection.request("POST", "/predict", real_png, {"Content-Type": "image/png"})
                response = connection.getresponse()
                assert response.status == 200 and response.getheader("Connection", "keep-alive") != "close"
                response.read()
                connections.append(connection)
            held = {pid: open_sockets(pid) - before[pid] for pid in workers}
            assert sorted(held.values()) == [held_each, held_each], held
    finally:
        for connection in connections:
            connection.close()
        server.stop()
