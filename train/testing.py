"""The workers of a multi-worker training run, started as users start them (the same `python -m train ...` in
each process, its own TF_CONFIG), for the tests and the benchmark. Standard library only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(addresses: list[str], index: int) -> str:
    """TF_CONFIG of worker `index` in a cluster of workers at `addresses` (host:port); worker 0 is the chief."""
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


class TrainingWorkers:
    """`python -m train <args>` in `len(addresses)` processes, one per address, each with its TF_CONFIG.

    prefixes: a command to run each worker under (e.g. ["ip", "netns", "exec", "host-a"]); threads: TensorFlow's
    intra-op threads per worker (several workers on one machine would otherwise each take every core)."""

    def __init__(self, args: list[str], addresses: list[str] | None = None, count: int = 2,
                 prefixes: list[list[str]] | None = None, python: str = sys.executable, cwd: Path = ROOT,
                 env: dict | None = None, threads: int | None = 1, log_dir: Path | None = None):
        self.addresses = addresses or [f"127.0.0.1:{port}" for port in free_ports(count)]
        self.args = list(args)
        self.prefixes = prefixes or [[] for _ in self.addresses]
        self.python, self.cwd = python, cwd
        self.env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", PYTHONPATH=str(cwd),
                        **{k: str(v) for k, v in (env or {}).items()})
        if threads:
            self.env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads),
                            OMP_NUM_THREADS=str(threads))
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="pocketcnn-workers-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []
        self._logs = []

    def log_path(self, index: int) -> Path:
        return self.log_dir / f"worker{index}.log"

    def start(self, args: list[str] | None = None) -> "TrainingWorkers":
        """Start every worker (with `args` instead of the constructor's, e.g. for --resume)."""
        self.stop()
        self.processes, self._logs = [], []
        for index, prefix in enumerate(self.prefixes):
            log = open(self.log_path(index), "w")
            env = dict(self.env, TF_CONFIG=tf_config(self.addresses, index))
            command = [*prefix, self.python, "-m", "train", *(self.args if args is None else args)]
            self.processes.append(subprocess.Popen(command, cwd=self.cwd, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True))
            self._logs.append(log)
        return self

    def wait(self, timeout: float) -> list[int | None]:
        """Exit codes, once every worker has exited or `timeout` seconds have passed (None: still running)."""
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        return [process.poll() for process in self.processes]

    def output(self, index: int) -> str:
        for log in self._logs:
            log.flush()
        return self.log_path(index).read_text(errors="replace")

    def outputs(self) -> str:
        return "\n".join(f"--- worker {i} ---\n{self.output(i)[-6000:]}" for i in range(len(self.processes)))

    def kill(self, index: int, signal_number: int = 9) -> None:
        """Kill worker `index` (and anything it started) at once, like a power cut or an OOM kill."""
        try:
            os.killpg(self.processes[index].pid, signal_number)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        for index, process in enumerate(self.processes):
            if process.poll() is None:
                self.kill(index)
                process.wait()
        for log in self._logs:
            log.close()
        self._logs = []

    def __enter__(self) -> "TrainingWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
