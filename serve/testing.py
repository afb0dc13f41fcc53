"""The service as `make serve` runs it (gunicorn -c python:serve.gunicorn_conf), on a free loopback port, for
the tests and the benchmarks (like flask.testing, for a real server); HAProxy in front of replicas of it, with
deploy/haproxy/haproxy.cfg. Standard library only."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = "serve:create_app()"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the tests' own http URLs
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class GunicornServer:
    """gunicorn with pocketcnn's settings serving `app` (the service, or a benchmark app) on a free port.

    env: POCKETCNN_* settings (and anything else the app reads); the repository argument, when given,
    becomes POCKETCNN_MODEL_REPOSITORY. Use start()/stop() or `with`."""

    def __init__(self, repository: Path | None = None, env: dict | None = None, python: str = sys.executable,
                 cwd: Path = ROOT, workers: int = 2, threads: int | None = None, app: str = APP,
                 log_path: Path | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, POCKETCNN_WORKERS=str(workers), POCKETCNN_BIND=f"127.0.0.1:{self.port}",
                        TF_CPP_MIN_LOG_LEVEL="2")
        if repository is not None:
            self.env["POCKETCNN_MODEL_REPOSITORY"] = str(repository)
        if threads is not None:
            self.env["POCKETCNN_THREADS"] = str(threads)
        self.env.update({k: str(v) for k, v in (env or {}).items()})
        # Each server its own metrics folder (gunicorn_conf empties it at start), where a test can read one worker's.
        self.metrics_dir = tempfile.mkdtemp(prefix="pocketcnn-metrics-")
        self.env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        self.workers = workers
        self.app = app
        self.command = [str(Path(python).parent / "gunicorn"), "-c", "python:serve.gunicorn_conf", app]
        self.cwd = cwd
        self.log_path = Path(log_path or self.env.get("POCKETCNN_TEST_LOG")
                             or Path(tempfile.gettempdir()) / f"pocketcnn-gunicorn-{self.port}.log")
        self.process: subprocess.Popen | None = None
        self.ready_seconds: float | None = None

    def start(self, wait: str = "/readyz", timeout: float = 60.0) -> "GunicornServer":
        """Start gunicorn; wait until `wait` answers 200 (None: do not wait)."""
        started = time.monotonic()
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        if wait:
            self.wait_for(wait, timeout)
        self.ready_seconds = time.monotonic() - started
        return self

    def __enter__(self) -> "GunicornServer":
        return self if self.process else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_for(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_running()
            try:
                if http_get(self.url + path, timeout=2)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}{path} not 200 within {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.output()}")

    def worker_pids(self) -> list[int]:
        master = self.process.pid
        try:
            return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
        except FileNotFoundError:
            return []

    def logged_pids(self, pattern: str) -> set[int]:
        """Pids of the workers whose log lines match `pattern` (gunicorn's lines carry the worker's pid)."""
        text = self.log_path.read_text(errors="replace")
        return {int(pid) for pid in re.findall(r"\[(\d+)\] \[[A-Z]+\] " + pattern, text)}

    def serving_pids(self) -> set[int]:
        """Workers that have logged "serving <name> v<N>": their model passed the self-check."""
        return self.logged_pids(r"serving \S+ v\d+")

    def wait_every_worker(self, pattern: str = r"serving \S+ v\d+", timeout: float = 30) -> list[int]:
        """Worker pids, once every worker has logged `pattern` (default: serves its model). /readyz only says
        that one worker is ready; each loads its model on its own."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_running()
            workers = self.worker_pids()
            if len(workers) == self.workers and set(workers) <= self.logged_pids(pattern):
                return workers
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every worker logged {pattern!r} within {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    def wait_every_worker_serving(self, timeout: float = 30) -> list[int]:
        return self.wait_every_worker(timeout=timeout)

    def worker_rss_mb(self) -> list[float]:
        sizes = []
        for pid in self.worker_pids():
            status = Path(f"/proc/{pid}/status").read_text()
            sizes.append(int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024)
        return sizes

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """SIGKILL to the master and every worker at once: the replica vanishes, as a container or a machine does."""
        pids = [self.process.pid, *self.worker_pids()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.log.close()

    def stop(self, signal_number: int = signal.SIGTERM) -> None:
        """Stop gunicorn: SIGTERM (graceful, after the drain if POCKETCNN_DRAIN_SECONDS is set), SIGINT (at once)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal_number)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            self.log.close()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


class HAProxy:
    """HAProxy with the project's configuration (deploy/haproxy/haproxy.cfg) in front of `replicas` ("host:port"
    each, one or two), on free loopback ports; its statistics (which replica is up) at `stats_url`."""

    CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"

    def __init__(self, replicas: list[str], log_path: Path | None = None, config: Path = CONFIG):
        if not 1 <= len(replicas) <= 2:
            raise ValueError("the configuration has two replicas; give one or two addresses")
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stats_url = f"http://127.0.0.1:{self.stats_port}/stats"
        self.folder = Path(tempfile.mkdtemp(prefix="pocketcnn-haproxy-"))
        text = config.read_text()
        if len(replicas) == 1:  # the same file without its second server
            text = "\n".join(line for line in text.splitlines() if "POCKETCNN_LB_REPLICA2" not in line) + "\n"
        self.config = self.folder / "haproxy.cfg"
        self.config.write_text(text)
        self.env = dict(os.environ, POCKETCNN_LB_BIND=f"127.0.0.1:{self.port}",
                        POCKETCNN_LB_STATS_BIND=f"127.0.0.1:{self.stats_port}",
                        POCKETCNN_LB_REPLICA1=replicas[0], POCKETCNN_LB_REPLICA2=replicas[-1])
        self.replicas = replicas
        self.log_path = Path(log_path or self.folder / "haproxy.log")
        self.process: subprocess.Popen | None = None

    def start(self, expected: dict[str, str] | None = None, timeout: float = 20.0) -> "HAProxy":
        """Start HAProxy and wait until the replicas have the `expected` statuses (default: every one UP, i.e.
        answering its health check with 200)."""
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(["haproxy", "-db", "-f", str(self.config)], env=self.env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.wait_for(expected or {f"replica{i + 1}": "UP" for i in range(len(self.replicas))}, timeout)
        return self

    def states(self) -> dict[str, dict]:
        """Each replica's row of HAProxy's statistics (status: UP, DOWN, ...; stot: requests sent to it; ...)."""
        status, body = http_get(self.stats_url + ";csv", timeout=5)
        if status != 200:
            raise RuntimeError(f"HAProxy's statistics answered {status}")
        lines = body.decode().lstrip("# ").splitlines()
        header = lines[0].split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {row["svname"]: row for row in rows if row["pxname"] == "replicas" and row["svname"] != "BACKEND"}

    def wait_for(self, expected: dict[str, str], timeout: float = 20.0) -> float:
        """Wait until each named replica has the expected status (e.g. {"replica1": "DOWN"}); return the seconds."""
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}:\n{self.output()}")
            try:
                states = {name: row["status"].split()[0] for name, row in self.states().items()}
                if all(states.get(name) == status for name, status in expected.items()):
                    return time.monotonic() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError, RuntimeError):
                states = {}
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"HAProxy's replicas not {expected} within {timeout} s (they are {states}):\n"
                                   f"{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "HAProxy":
        return self if self.process else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
