"""The HTTP clients: clients.predict (library and CLI), clients.loadgen and the curl examples of
the README's curl examples, against the real service (gunicorn serving the tiny model, tests/tiny_model.py) and,
for the answers a healthy service cannot be made to give (503, a proxy's HTML page), against small local fakes."""

from __future__ import annotations

import ast
import json
import re
import socket
import stat
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import png_bytes

from clients import loadgen
from clients.predict import (
    ServiceError,
    ServiceUnavailable,
    encode_multipart,
    main,
    predict,
    predict_many,
    read_image_part,
)
from contract import decode_image, read_manifest
from contract.runtime import open_runner

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The curl examples users read: the sh blocks of the README's "### curl" section.
CURL_SECTION = README.read_text(encoding="utf-8").split("### curl", 1)[1].split("\n### ", 1)[0]
DOCUMENTED_URL = "http://127.0.0.1:8000"
CURL_BLOCKS = re.findall(r"```sh\n(.*?)```", CURL_SECTION, flags=re.DOTALL)
LINE = re.compile(r"^  (?P<label>.+?)\s+(?P<percent>\d+\.\d\d) %(?:  (?P<bar>[█▏▎▍▌▋▊▉]*))?$")
EIGHTHS = {"▏": 1, "▎": 2, "▍": 3, "▌": 4, "▋": 5, "▊": 6, "▉": 7, "█": 8}


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def photos(fashion_mnist_test, tmp_path_factory) -> list[Path]:
    """Real Fashion-MNIST test images as PNG files, one of each of the first four classes."""
    x, y = fashion_mnist_test
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for label in range(4):
        index = int(np.flatnonzero(y == label)[0])
        path = folder / f"class{label}_{index}.png"
        path.write_bytes(png_bytes(x[index]))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "notes.txt"
    path.write_text("This is a shopping list, not a photo.\n")
    return path


@pytest.fixture(scope="module")
def live_server(tiny_server) -> str:
    return tiny_server.url


@pytest.fixture(scope="module")
def served_model(live_server, tiny_version, photos):
    """The runner of the artifact the service reports it uses, to check its answers independently."""
    answer = predict(photos[0], url=live_server)
    manifest = read_manifest(tiny_version)
    artifact = manifest["artifacts"][answer["model"]["format"]]
    return manifest, open_runner(tiny_version / artifact["file"], artifact["runtime"])


def expected_probabilities(runner, photo: Path) -> np.ndarray:
    return runner.predict(decode_image(photo.read_bytes(), 28, 28, 1)[np.newaxis])[0]


# --- library: answers --------------------------------------------------------------------------------


def test_predict_returns_every_class_most_likely_first(live_server, photos, served_model):
    manifest, runner = served_model
    for photo in photos:
        answer = predict(photo, url=live_server)
        assert answer["model"]["name"] == manifest["name"] and answer["model"]["version"] == manifest["version"]
        predictions = answer["predictions"]
        percents = [p["percent"] for p in predictions]
        assert sorted(p["label"] for p in predictions) == sorted(manifest["labels"])
        assert all(manifest["labels"][p["index"]] == p["label"] for p in predictions)
        assert percents == sorted(percents, reverse=True)
        assert sum(percents) == pytest.approx(100, abs=1e-6)
        probabilities = expected_probabilities(runner, photo)
        assert predictions[0]["index"] == int(np.argmax(probabilities))
        assert predictions[0]["percent"] == pytest.approx(100 * probabilities.max(), abs=0.011)


def test_predict_takes_bytes_and_top_k(live_server, photos):
    full = predict(photos[1], url=live_server)["predictions"]
    top = predict(photos[1].read_bytes(), url=live_server + "/", top_k=3)["predictions"]
    assert [p["label"] for p in top] == [p["label"] for p in full[:3]]
    assert [p["percent"] for p in top] == [p["percent"] for p in full[:3]]


def test_predict_many_answers_each_photo_in_order(live_server, photos):
    sources = [photos[2], photos[0], photos[3].read_bytes(), photos[1]]
    results = predict_many(sources, url=live_server)
    assert len(results) == 4
    for source, result in zip(sources, results, strict=True):
        alone = predict(source, url=live_server)["predictions"]
        assert [p["label"] for p in result["predictions"]] == [p["label"] for p in alone]
        if isinstance(source, Path):
            assert result["filename"] == source.name
    assert predict_many([photos[0]], url=live_server, top_k=1)[0]["predictions"][0]["label"] == \
        predict(photos[0], url=live_server)["predictions"][0]["label"]


# --- library: errors ---------------------------------------------------------------------------------


def test_a_refused_photo_raises_service_error_with_the_services_message(live_server, text_file):
    with pytest.raises(ServiceError) as caught:
        predict(text_file, url=live_server)
    error = caught.value
    assert error.status == 400 and re.fullmatch(r"[a-z][a-z0-9_]*", error.code)
    # The message is the service's own: the same as a plain multipart POST gets.
    body, content_type = encode_multipart([read_image_part(text_file)])
    raw = subprocess.run(["curl", "-sS", "-H", f"Content-Type: {content_type}", "--data-binary", "@-",
                          f"{live_server}/predict"], input=body, capture_output=True, timeout=30, check=True)
    assert error.message == json.loads(raw.stdout)["error"]["message"] and len(error.message) > 10
    with pytest.raises(ServiceError) as caught:
        predict(text_file.read_bytes(), url=live_server)  # the same bytes, not from a file
    assert (caught.value.status, caught.value.code) == (400, error.code)


def test_top_k_out_of_range(live_server, photos):
    with pytest.raises(ServiceError) as caught:
        predict(photos[0], url=live_server, top_k=99)
    assert caught.value.status == 400 and "top_k" in caught.value.message
    with pytest.raises(ValueError, match="top_k"):
        predict(photos[0], url=live_server, top_k=0)  # refused before anything is sent


def test_a_service_that_is_down_raises_service_unavailable(real_png):
    url = f"http://127.0.0.1:{unused_port()}"
    with pytest.raises(ServiceUnavailable) as caught:
        predict(real_png, url=url, timeout=5)
    assert url in caught.value.message and "make serve" in caught.value.message
    assert "connection refused" in caught.value.message


@contextmanager
def fake_service(status: int, body: bytes, content_type: str = "application/json"):
    """A local HTTP server answering every request with one fixed response."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_service_that_is_not_ready_raises_service_unavailable_with_its_reason(real_png, capsys, tmp_path):
    body = json.dumps({"error": {"code": "not_ready", "message": "The model is still loading."},
                       "reason": "self-check running on 10 reference images"}).encode()
    with fake_service(503, body) as url:
        with pytest.raises(ServiceUnavailable) as caught:
            predict(real_png, url=url)
        photo = tmp_path / "photo.png"
        photo.write_bytes(real_png)
        assert main([str(photo), "--url", url]) == 2
    assert caught.value.status == 503
    assert "not ready" in caught.value.message and "The model is still loading." in caught.value.message
    assert "self-check running on 10 reference images" in caught.value.message
    assert "self-check running" in capsys.readouterr().err


def test_an_answer_that_is_not_the_services_json_is_reported_as_it_came(real_png):
    with fake_service(502, b"<html><body>Bad Gateway from the proxy</body></html>", "text/html") as url:
        with pytest.raises(ServiceError) as caught:
            predict(real_png, url=url)
    assert caught.value.status == 502 and "Bad Gateway from the proxy" in caught.value.message


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1/", "http://"])
def test_a_malformed_url_is_refused_before_sending(real_png, url):
    with pytest.raises(ValueError, match="not a service URL"):
        predict(real_png, url=url)


def test_predict_and_loadgen_use_only_the_standard_library():
    for module in ("predict.py", "loadgen.py"):
        tree = ast.parse((ROOT / "clients" / module).read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
        outside = {name for name in imported
                   if name.split(".")[0] not in sys.stdlib_module_names and name not in ("clients.predict",)}
        assert not outside, f"clients/{module} imports {outside}"
    # And they really run without site-packages (-S): no numpy, no requests, no repository code.
    done = subprocess.run([sys.executable, "-S", "-c", "import clients.predict, clients.loadgen, sys; "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                           "{'numpy', 'requests', 'contract', 'PIL', 'urllib3'}))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


# --- command line --------------------------------------------------------------------------------


def parse_table(text: str) -> tuple[str, list[dict]]:
    lines = text.rstrip("\n").splitlines()
    rows = []
    for line in lines[1:]:
        match = LINE.match(line)
        assert match, f"not a table row: {line!r}"
        bar = match["bar"] or ""
        rows.append({"label": match["label"], "percent": float(match["percent"]),
                     "bar_eighths": sum(EIGHTHS[c] for c in bar)})
    return lines[0], rows


def test_cli_prints_a_table_per_photo(live_server, photos, capsys):
    assert main([str(photos[0]), str(photos[3]), "--url", live_server]) == 0
    tables = capsys.readouterr().out.split("\n\n")
    assert len(tables) == 2
    for photo, table in zip((photos[0], photos[3]), tables, strict=True):
        answer = predict(photo, url=live_server)
        title, rows = parse_table(table)
        model = answer["model"]
        assert title.startswith(f"{photo}: {model['name']} v{model['version']} ({model['format']})")
        assert [r["label"] for r in rows] == [p["label"] for p in answer["predictions"]]
        assert [r["percent"] for r in rows] == [p["percent"] for p in answer["predictions"]]
        for row in rows:  # 30 characters for 100 %, in eighths of a character
            assert abs(row["bar_eighths"] - row["percent"] / 100 * 30 * 8) <= 0.5
        assert rows[0]["bar_eighths"] > 0


def test_cli_json_and_top_k(live_server, photos, capsys):
    assert main([str(photos[2]), str(photos[1]), "--url", live_server, "--json", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for photo, line in zip((photos[2], photos[1]), lines, strict=True):
        answer = json.loads(line)
        assert len(answer["predictions"]) == 2
        assert answer["predictions"] == predict(photo, url=live_server, top_k=2)["predictions"]
    assert main([str(photos[2]), "--url", live_server, "--top-k", "3"]) == 0
    _, rows = parse_table(capsys.readouterr().out)
    assert len(rows) == 3


def test_cli_exit_1_with_the_services_message_for_a_file_that_is_not_a_photo(live_server, photos, text_file,
                                                                              capsys):
    with pytest.raises(ServiceError) as caught:
        predict(text_file, url=live_server)
    assert main([str(text_file), str(photos[0]), "--url", live_server]) == 1
    out, err = capsys.readouterr()
    assert f"{text_file}: refused by the service (HTTP 400" in err and caught.value.message in err
    assert str(photos[0]) in out, "the good photo after the bad one is still classified"


def test_cli_exit_2_when_the_service_is_down(tmp_path, real_png, capsys):
    photo = tmp_path / "photo.png"
    photo.write_bytes(real_png)
    url = f"http://127.0.0.1:{unused_port()}"
    assert main([str(photo), "--url", url]) == 2
    err = capsys.readouterr().err
    assert f"Nothing is answering at {url} (connection refused)" in err and "make serve" in err


@pytest.mark.parametrize("argv,message", [
    (["--top-k", "0", "x.png"], "must be at least 1"),
    (["--top-k", "three", "x.png"], "not a whole number"),
    ([], "PHOTO"),
    (["missing-photo.png"], "cannot read missing-photo.png"),
    (["x.png", "--url", "localhost:8000"], "not a service URL"),
])
def test_cli_exit_2_for_bad_arguments(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_help_explains_itself(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for words in ("PHOTO", "--url", "--top-k", "--json", "Exit status", "make serve"):
        assert words in text


def test_cli_runs_as_a_module_without_site_packages(live_server, photos):
    done = subprocess.run([sys.executable, "-S", "-m", "clients.predict", str(photos[0]), "--url", live_server,
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no runpy warning, nothing else
    assert json.loads(done.stdout)["predictions"] == predict(photos[0], url=live_server)["predictions"]


# --- load generator ------------------------------------------------------------------------------


def test_loadgen_counts_every_request_under_concurrency(live_server, photos):
    body, content_type = encode_multipart([read_image_part(photos[0])])
    report = loadgen.run_load(live_server, body, content_type, requests=60, concurrency=4)
    assert report["requests"] == 60 and report["ok"] == 60 and report["failed"] == 0, report["failures"]
    assert 1 <= report["connections"] <= 60
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert report["requests_per_second"] > 0


def test_loadgen_cli_counts_refusals_by_status(live_server, text_file, capsys):
    assert loadgen.main([live_server, "--file", str(text_file), "--requests", "12", "--concurrency", "3",
                         "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["requests"] == 12 and report["ok"] == 0 and report["failures"] == {"HTTP 400": 12}


def test_loadgen_counts_connection_failures_by_exception(real_png, capsys, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(real_png)
    url = f"http://127.0.0.1:{unused_port()}"
    assert loadgen.main([url, "--file", str(photo), "--requests", "10", "--concurrency", "2"]) == 1
    text = capsys.readouterr().out
    assert "failed: 10" in text and "ConnectionRefusedError: 10" in text


def test_loadgen_keeps_connections_alive(real_png):
    """Against an HTTP/1.1 server that keeps connections open, each client thread uses exactly one."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            received = self.rfile.read(int(self.headers["Content-Length"]))
            answer = json.dumps({"bytes": len(received)}).encode()
            self.send_response(200 if received == real_png_body else 400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    real_png_body, content_type = real_png, "image/png"
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        report = loadgen.run_load(f"http://127.0.0.1:{server.server_port}", real_png_body, content_type,
                                  requests=40, concurrency=4)
    finally:
        server.shutdown()
        server.server_close()
    assert report["ok"] == 40 and report["connections"] == 4


def test_loadgen_refuses_bad_arguments(real_png, capsys):
    with pytest.raises(ValueError):
        loadgen.run_load("http://127.0.0.1:1", real_png, "image/png", requests=0, concurrency=1)
    assert loadgen.main(["http://127.0.0.1:1", "--file", "no-such-photo.png"]) == 2
    assert "cannot read no-such-photo.png" in capsys.readouterr().err
    assert loadgen.main(["http://127.0.0.1:1", "--file", "x", "--concurrency", "0"]) == 2


# --- curl examples -------------------------------------------------------------------------------


def test_readme_curl_examples_show_every_way_in():
    text = " ".join(CURL_BLOCKS)
    assert "-F image=@photo.png" in text                              # multipart
    assert "Content-Type: image/png" in text                          # raw body
    assert '{"image": "%s"}' in text and "base64" in text             # base64 JSON
    assert "/v1/models/fashion_mnist:predict" in text and '"b64"' in text  # TF Serving route


@pytest.fixture(scope="module")
def curl_folder(tmp_path_factory, photos) -> Path:
    """photo.png and another.png (real images) and a curl that also prints the HTTP status."""
    folder = tmp_path_factory.mktemp("curl")
    (folder / "photo.png").write_bytes(photos[0].read_bytes())
    (folder / "another.png").write_bytes(photos[1].read_bytes())
    shim = folder / "bin" / "curl"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\nexec /usr/bin/curl --write-out '\\nHTTP %{http_code}' \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return folder


@pytest.mark.parametrize("block", CURL_BLOCKS, ids=[f"example{i + 1}" for i in range(len(CURL_BLOCKS))])
def test_curl_examples_work(block, live_server, curl_folder, photos):
    assert DOCUMENTED_URL in block, "every example must name the documented URL"
    command = block.replace(DOCUMENTED_URL, live_server)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=curl_folder, capture_output=True,
                          text=True, timeout=60, env={"PATH": f"{curl_folder / 'bin'}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\nHTTP ")
    assert status == "200", done.stdout
    answer = json.loads(body)
    expected = predict(photos[0], url=live_server)["predictions"]
    if "/v1/models/" in block:
        [probabilities] = answer["predictions"]
        assert len(probabilities) == len(expected) and sum(probabilities) == pytest.approx(1, abs=1e-3)
        assert int(np.argmax(probabilities)) == expected[0]["index"]
    elif "another.png" in block:
        assert [r["predictions"][0]["label"] for r in answer["results"]] == [
            expected[0]["label"], predict(photos[1], url=live_server)["predictions"][0]["label"]]
    else:
        top_k = re.search(r"top_k=(\d+)", block)
        assert answer["predictions"] == (expected[:int(top_k[1])] if top_k else expected)
