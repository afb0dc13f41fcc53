"""The Dockerfile, run without Docker (no engine here): its own install command in a fresh virtual
environment with only the serving extra, then its own CMD with its own ENV, as a non-root user,
against a read-only model repository, checked by its own HEALTHCHECK command."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT

from bench.python_versions import SOURCES, copy_sources
from serve.testing import free_port

pytestmark = pytest.mark.slow
NOBODY = 65534
# The image's interpreter is a system Python; so is Debian's (same 3.11, same bookworm). The venv's
# own interpreter may live under /root (pyenv), out of reach of an unprivileged user.
SYSTEM_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """{stage name: [(INSTRUCTION, arguments), ...]}, with line continuations joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction == "FROM":
            current = arguments.split(" AS ")[-1].strip()
            stages[current] = []
        elif current:
            stages[current].append((instruction, arguments.strip()))
    return stages


@pytest.fixture(scope="module")
def serving_install():
    """The build stage, executed: its COPY sources into a build folder, its RUN in a fresh venv."""
    stages = dockerfile_stages()
    build = stages["build"]
    root = Path(tempfile.mkdtemp(prefix="pocketcnn-container-"))
    os.chmod(root, 0o755)  # readable by the unprivileged user that will run the service
    source = root / "src"
    source.mkdir()
    for instruction, arguments in build:
        if instruction == "COPY":
            *sources, _ = arguments.split()
            copy_sources(sources, source)
    venv = root / "venv"
    (run,) = [a for i, a in build if i == "RUN"]
    command = run.replace("/opt/pocketcnn", str(venv)).replace("python -m venv", f"{SYSTEM_PYTHON} -m venv")
    started = time.monotonic()
    result = subprocess.run(command, shell=True, cwd=source, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"\nserving install: {time.monotonic() - started:.0f} s")
    yield venv, stages["runtime"]
    shutil.rmtree(root, ignore_errors=True)


def test_the_serving_install_has_no_tensorflow(serving_install):
    venv, _ = serving_install
    python = venv / "bin" / "python"
    for heavy in ("tensorflow", "keras", "tf_keras", "tf2onnx"):
        found = subprocess.run([python, "-c", f"import {heavy}"], capture_output=True)
        assert found.returncode != 0, f"{heavy} must not be in the serving install"
    for needed in ("flask", "gunicorn", "onnxruntime", "ai_edge_litert", "prometheus_client", "serve", "contract",
                   "contract._product_photo"):  # the compiled input recipe: the build stage has a C compiler
        assert subprocess.run([python, "-c", f"import {needed}"], capture_output=True).returncode == 0, needed
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file()) / 1e6
    print(f"serving install size: {size:.0f} MB")


def test_the_image_command_serves_a_real_model_as_non_root_from_read_only_models(serving_install, published_version,
                                                                                 real_png):
    venv, runtime = serving_install
    env_line = " ".join(a for i, a in runtime if i == "ENV")
    image_env = dict(pair.split("=", 1) for pair in shlex.split(env_line))
    (cmd,) = [json.loads(a) for i, a in runtime if i == "CMD"]
    (healthcheck,) = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert any(i == "USER" and a != "root" for i, a in runtime), "the image must not run as root"

    # The model repository as the container sees it: owned by root, not writable by the service.
    models = Path(tempfile.mkdtemp(prefix="pocketcnn-models-ro-"))
    os.chmod(models, 0o755)
    shutil.copytree(published_version, models / "fashion_mnist" / "1")
    port = free_port()
    env = {
        "PATH": image_env["PATH"].replace("/opt/pocketcnn", str(venv)).replace("$PATH", os.environ["PATH"]),
        "PYTHONUNBUFFERED": "1",
        "POCKETCNN_MODEL_REPOSITORY": str(models),  # the /models mount
        "POCKETCNN_BIND": image_env["POCKETCNN_BIND"].replace("0.0.0.0:8000", f"127.0.0.1:{port}"),
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="pocketcnn-metrics-"),
        "HOME": "/nonexistent",
    }
    os.chmod(env["PROMETHEUS_MULTIPROC_DIR"], 0o777)
    as_nobody = {"user": NOBODY, "group": NOBODY} if os.geteuid() == 0 and SYSTEM_PYTHON != sys.executable else {}
    server = subprocess.Popen(cmd, cwd="/tmp", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              **as_nobody)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() - started < 60
            time.sleep(0.1)
        print(f"ready {time.monotonic() - started:.1f} s after start")
        request = urllib.request.Request(url + "/predict", data=real_png, headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["model"]["name"] == "fashion_mnist" and len(answer["predictions"]) == 10
        if as_nobody:
            workers = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
            for pid in [str(server.pid), *workers]:
                uid = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if line.startswith("Uid:"))
                assert uid.split()[1] == str(NOBODY), f"process {pid} is not running as the unprivileged user"
        # The image's HEALTHCHECK command, with its python, against this server.
        check = json.loads(healthcheck.split("CMD", 1)[1].strip())
        check = [str(venv / "bin" / "python") if part == "python"
                 else part.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                 for part in check]
        assert subprocess.run(check, timeout=10).returncode == 0
    finally:
        server.terminate()
        server.wait(15)
        shutil.rmtree(models, ignore_errors=True)


def other_pythons() -> list:
    """Python 3.12 and 3.13 interpreters (pyenv's, or on PATH): the serving install must work on each."""
    found = []
    roots = [Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"]
    for minor in ("3.12", "3.13"):
        candidates = sorted((p / "bin" / "python3" for root in roots for p in root.glob(f"{minor}.*")
                             if (p / "bin" / "python3").exists()), reverse=True)
        on_path = shutil.which(f"python{minor}")
        python = str(candidates[0]) if candidates else on_path
        found.append(pytest.param(python, id=f"python{minor}",
                                  marks=() if python else pytest.mark.skip(reason=f"no Python {minor} here (pyenv)")))
    return found


@pytest.mark.parametrize("python", other_pythons())
def test_the_serving_install_serves_a_real_model_on_other_pythons(python, published_version, real_png, tmp_path):
    """requires-python says 3.11 to 3.13: on 3.12 and 3.13 the serving install (pinned by constraints.txt) must
    install and serve the model exported on 3.11, with the same answer as here."""
    from contract import decode_image, read_manifest
    from contract.runtime import open_runner
    from serve.testing import GunicornServer

    source = tmp_path / "src"
    source.mkdir()
    copy_sources(SOURCES, source)
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "-c", "constraints.txt", ".[serve]"],
                             cwd=source, capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.version)"],
                             capture_output=True, text=True).stdout
    server = GunicornServer(published_version.parent.parent, python=str(venv / "bin" / "python"), cwd=tmp_path)
    try:
        server.start()
        request = urllib.request.Request(server.url + "/predict", data=real_png, headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
    finally:
        server.stop()
    manifest = read_manifest(published_version)
    artifact = manifest["artifacts"][answer["model"]["format"]]
    expected = open_runner(published_version / artifact["file"], artifact["runtime"]).predict(
        decode_image(real_png, 28, 28, 1)[None])[0]
    print(f"\nserving install on Python {version.split()[0]}: {answer['predictions'][0]}")
    assert answer["predictions"][0]["index"] == int(expected.argmax())
    assert answer["predictions"][0]["percent"] == pytest.approx(100 * expected.max() / expected.sum(), abs=0.011)
