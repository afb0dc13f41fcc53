"""Side by side with the servers users would pick instead: pocketcnn, Triton Inference Server (nvidia-pytriton) and
LitServe, on the same published model file, the same machine and the same load generator (wrk), measured in turn
(slices of a few seconds, the order rotated every round, as bench/serve_bench.py does).

  pocketcnn          the service, asked three ways: /predict with a multipart upload (what the page and curl send),
                     /predict with the photo in base64 JSON (LitServe's body), and the V2 route with the photo as a
                     binary BYTES tensor (Triton's body)
  triton             bench/apps/triton_peer.py: pytriton's @batch callable, dynamic batching, one instance per worker
  litserve           bench/apps/litserve_peer.py: LitServe's documented LitAPI
  floor_model        bench/apps/floor.py: the HTTP ceiling plus decode_image and the model, nothing else

Every app decodes the photo with the same decode_image and the model's recorded input recipe and runs the same model
file through the same LiteRT runner; the peers run in .venv-peers (make peers). Each pocketcnn form is compared with
the peer that receives the same body (V2 binary with Triton, base64 JSON with LitServe); the target: at least twice
the requests per second of the better peer, with a lower p99, at concurrency 8 and 32 on both inputs, and pocketcnn
(multipart) within 10 % of its floor.

    python -m bench.peers_bench --models bench/models          # results in bench/results/peers.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.serve_bench import (
    Server,
    cpu_seconds,
    make_images,
    median_ratio,
    multipart,
    served_artifact,
    summarize,
    wait_until_idle,
)
from serve.testing import free_port, http_get

ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
LUA = ROOT / "bench" / "wrk_body.lua"
CONCURRENCIES = (8, 32)


class PeerServer:
    """A peer server (Triton through pytriton, LitServe) in .venv-peers, in its own process group, started once
    `ready_path` answers 200 twenty times in a row; stop() ends the whole group (pytriton starts tritonserver and a
    Python backend stub, LitServe its workers)."""

    def __init__(self, module: str, env: dict, ready_path: str, python: Path = PEERS_PYTHON):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.module, self.ready_path, self.python = module, ready_path, python
        self.env = dict(os.environ, POCKETCNN_PEER_PORT=str(self.port), **env)
        self.log_path = Path(tempfile.gettempdir()) / f"pocketcnn-peer-{module.rsplit('.', 1)[-1]}-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.ready_seconds: float | None = None

    def start(self, timeout: float = 300.0) -> "PeerServer":
        started = time.monotonic()
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen([str(self.python), "-m", self.module], cwd=ROOT, env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        in_a_row = 0
        while in_a_row < 20:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.output()}")
            try:
                in_a_row = in_a_row + 1 if http_get(self.url + self.ready_path, timeout=2)[0] == 200 else 0
                if in_a_row:
                    continue
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                in_a_row = 0
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{self.module} not ready after {timeout} s:\n{self.output()}")
            time.sleep(0.2)
        self.ready_seconds = time.monotonic() - started
        return self

    def __enter__(self) -> "PeerServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def worker_pids(self) -> list[str]:
        """Every process of the server (the launcher and its descendants): their CPU time is the server's."""
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(str(pid))
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    todo += [int(child) for child in (task / "children").read_text().split()]
                except OSError:
                    pass
        return [pid for pid in found if Path(f"/proc/{pid}/stat").exists()]

    def worker_rss_mb(self) -> float:
        total = 0
        for pid in self.worker_pids():
            with contextlib.suppress(OSError, AttributeError):
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
        return total / 1024

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of the group is left (tritonserver, stubs)
        self.process.wait()
        self.log.close()


def bodies(image: Path, folder: Path) -> dict[str, tuple[Path, str, str]]:
    """The three request bodies for one photo: (file, content type, extra header)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = image.read_bytes()
    form, form_type = multipart(image)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1],
                                     "parameters": {"binary_data_size": 4 + len(data)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}]}).encode()
    found = {"multipart": (form, form_type, ""),
             "json_base64": (json.dumps({"image": base64.b64encode(data).decode()}).encode(), "application/json", ""),
             "v2_binary": (header + len(data).to_bytes(4, "little") + data, "application/octet-stream",
                           f"Inference-Header-Content-Length: {len(header)}")}
    files = {}
    for kind, (body, content_type, extra) in found.items():
        path = folder / f"{image.stem}.{kind}.body"
        path.write_bytes(body)
        files[kind] = (path, content_type, extra)
    return files


def post(url: str, body: tuple[Path, str, str]) -> bytes:
    path, content_type, extra = body
    headers = {"Content-Type": content_type}
    if extra:
        name, value = extra.split(": ", 1)
        headers[name] = value
    request = urllib.request.Request(url, data=path.read_bytes(), headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return response.read()


def probabilities(answer: bytes) -> list[float]:
    """The probabilities in any of the apps' answers."""
    document = json.loads(answer)
    if "outputs" in document:
        return [float(v) for v in document["outputs"][0]["data"]]
    if "probabilities" in document:
        return [float(v) for v in document["probabilities"]]
    by_index = {p["index"]: p["percent"] / 100 for p in document["predictions"]}
    return [by_index[i] for i in range(len(by_index))]


def wrk(url: str, body: tuple[Path, str, str], connections: int, seconds: float, pids: list[str]) -> dict:
    """One wrk slice with the CPU time the server's processes spent per request (ms)."""
    path, content_type, extra = body
    cpu_before = cpu_seconds(pids)
    result = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", "-s",
                             str(LUA), url], env=dict(os.environ, BODY=str(path), CONTENT_TYPE=content_type,
                                                      HEADER=extra),
                            capture_output=True, text=True, timeout=seconds + 60)
    line = next(line for line in result.stdout.splitlines() if line.startswith("WRK_JSON "))
    stats = json.loads(line[len("WRK_JSON "):])
    stats["requests_per_second"] = round(stats["requests"] / stats["seconds"], 1)
    if stats["requests"]:
        stats["worker_cpu_ms_per_request"] = round((cpu_seconds(pids) - cpu_before) * 1000 / stats["requests"], 3)
    return stats


def in_turn(apps: dict[str, tuple], connections: int, seconds: float, rounds: int) -> dict:
    """wrk against every app in turn, `rounds` times, the order rotated each round (see serve_bench.interleaved)."""
    names = list(apps)
    slices: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            server, url, body = apps[name]
            pids = server.worker_pids()
            slices[name].append(wrk(url, body, connections, seconds, pids))
            wait_until_idle(pids)
    return {name: summarize(runs) for name, runs in slices.items()}


def peer_environment(version: Path, fmt: str, workers: int, max_batch: int) -> dict:
    return {"POCKETCNN_PEER_MODEL": str(version), "POCKETCNN_PEER_FORMAT": fmt,
            "POCKETCNN_PEER_WORKERS": str(workers), "POCKETCNN_PEER_MAX_BATCH": str(max_batch)}


def python_libdir(python: Path) -> str:
    """The lib directory of the peers' Python: Triton's Python backend must load that libpython, not the system's."""
    done = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.peers_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, type=Path, help="model repository with a published version")
    parser.add_argument("--seconds", type=int, default=4, help="wrk duration of one slice")
    parser.add_argument("--rounds", type=int, default=5, help="slices per app and measurement, taken in turn")
    parser.add_argument("--workers", type=int, default=2, help="workers of every app (Triton: model instances)")
    parser.add_argument("--threads", type=int, default=4, help="threads per pocketcnn / floor worker")
    parser.add_argument("--triton-max-batch", type=int, default=32, help="Triton's dynamic batching (1: off)")
    parser.add_argument("--litserve-max-batch", type=int, default=1, help="LitServe's batching (1: off)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peers.json")
    args = parser.parse_args(argv)
    if not PEERS_PYTHON.exists():
        raise SystemExit("no .venv-peers: make peers (make bench makes it)")
    models = args.models.resolve()
    images = make_images(args.out.parent / "images")
    model_env = {"POCKETCNN_MODEL_REPOSITORY": str(models), "POCKETCNN_POLL_SECONDS": "0"}
    report = {"settings": {"workers": args.workers, "threads": args.threads, "rounds": args.rounds,
                           "wrk": f"wrk -t1 -c{{{','.join(map(str, CONCURRENCIES))}}} -d{args.seconds}s",
                           "triton_max_batch": args.triton_max_batch, "litserve_max_batch": args.litserve_max_batch,
                           "cores": os.cpu_count()},
              "runs": [], "comparisons": [], "agreement": {}}
    print(f"Peers benchmark: {args.rounds} rounds of {args.seconds} s per app, apps in turn (requests/s)", flush=True)
    with contextlib.ExitStack() as stack:
        pocketcnn = stack.enter_context(Server("serve:create_app()", model_env, args.workers, args.threads))
        artifact = served_artifact(pocketcnn.url, models)
        with urllib.request.urlopen(pocketcnn.url + "/model", timeout=10) as response:
            served = json.load(response)["served"]
        version, name, fmt = artifact.parent, served["name"], served["format"]
        report.update(model_file=str(artifact.relative_to(models)), format=fmt)
        floor = stack.enter_context(Server("bench.apps.floor:app", {"POCKETCNN_FLOOR_MODEL": str(artifact)},
                                           args.workers, args.threads))
        triton = stack.enter_context(PeerServer(
            "bench.apps.triton_peer", {**peer_environment(version, fmt, args.workers, args.triton_max_batch),
                                       "LD_LIBRARY_PATH": python_libdir(PEERS_PYTHON)},
            f"/v2/models/{name}/ready"))
        litserve = stack.enter_context(PeerServer(
            "bench.apps.litserve_peer", peer_environment(version, fmt, args.workers, args.litserve_max_batch),
            "/health"))
        report["ready_seconds"] = {"pocketcnn": round(pocketcnn.ready_seconds, 2),
                                   "triton": round(triton.ready_seconds, 2),
                                   "litserve": round(litserve.ready_seconds, 2)}
        for image_name, image in images.items():
            body = bodies(image, args.out.parent / "images" / "bodies")
            apps = {"pocketcnn_multipart": (pocketcnn, pocketcnn.url + "/predict", body["multipart"]),
                    "pocketcnn_json": (pocketcnn, pocketcnn.url + "/predict", body["json_base64"]),
                    "pocketcnn_v2": (pocketcnn, f"{pocketcnn.url}/v2/models/{name}/infer", body["v2_binary"]),
                    "triton": (triton, f"{triton.url}/v2/models/{name}/infer", body["v2_binary"]),
                    "litserve": (litserve, litserve.url + "/predict", body["json_base64"]),
                    "floor_model": (floor, floor.url + "/predict", body["multipart"])}
            answers = {}
            for app, (_, url, app_body) in apps.items():
                for _ in range(20):  # warm up
                    answer = post(url, app_body)
                if app != "floor_model":
                    answers[app] = probabilities(answer)
            reference = answers["pocketcnn_v2"]
            report["agreement"][image_name] = {app: max(abs(a - b) for a, b in zip(found, reference, strict=True))
                                               for app, found in answers.items()}
            for connections in CONCURRENCIES:
                results = in_turn(apps, connections, args.seconds, args.rounds)
                for app, stats in results.items():
                    report["runs"].append({"app": app, "image": image_name, "concurrency": connections, **stats})
                comparison = compare(results, image_name, connections)
                report["comparisons"].append(comparison)
                print(f"  {image_name:<13} c={connections:<3} " + "  ".join(
                    f"{app} {stats['requests_per_second']:>7,.1f} (p99 {stats['p99_ms']:.0f} ms)"
                    for app, stats in results.items())
                    + f"  | better peer: {comparison['better_peer']}, pocketcnn {comparison['vs_better_peer']:.2f}x "
                      f"it; pocketcnn / floor {comparison['multipart_vs_floor'] * 100:.0f} %", flush=True)
        report["memory_mb"] = {"pocketcnn_workers": [round(v, 1) for v in pocketcnn.worker_rss_mb()],
                               "triton_all_processes": round(triton.worker_rss_mb(), 1),
                               "litserve_all_processes": round(litserve.worker_rss_mb(), 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


# Which pocketcnn request form receives the same body as each peer.
SAME_BODY = {"triton": "pocketcnn_v2", "litserve": "pocketcnn_json"}


def compare(results: dict, image: str, connections: int) -> dict:
    """pocketcnn against each peer on the same body (median of per-round ratios), the better peer, and pocketcnn's
    share of its floor."""
    found = {"image": image, "concurrency": connections}
    for peer, ours in SAME_BODY.items():
        found[f"{ours}_vs_{peer}"] = round(median_ratio(results[ours], results[peer]), 3)
        found[f"p99_ms_{ours}_vs_{peer}"] = [results[ours]["p99_ms"], results[peer]["p99_ms"]]
    better = max(SAME_BODY, key=lambda peer: results[peer]["requests_per_second"])
    found["better_peer"] = better
    found["vs_better_peer"] = found[f"{SAME_BODY[better]}_vs_{better}"]
    found["p99_lower_than_better_peer"] = results[SAME_BODY[better]]["p99_ms"] < results[better]["p99_ms"]
    found["multipart_vs_floor"] = round(median_ratio(results["pocketcnn_multipart"], results["floor_model"]), 3)
    # The bound on "pocketcnn / the better peer": the floor (decode + model, nothing else) against that peer.
    found["floor_vs_better_peer"] = round(median_ratio(results["floor_model"], results[better]), 3)
    return found


def markdown(report: dict) -> list[str]:
    """The BENCHMARKS.md section for bench/results/peers.json."""
    settings = report["settings"]
    by = {(r["app"], r["image"], r["concurrency"]): r for r in report["runs"]}
    lines = [
        "## Serving: side by side with Triton and LitServe",
        "",
        f"The same model file (`{report['model_file']}`, `{report['format']}`) served by pocketcnn, by Triton "
        "Inference Server through nvidia-pytriton (`bench/apps/triton_peer.py`: a `@batch` inference callable, "
        f"dynamic batching up to {settings['triton_max_batch']}, {settings['workers']} model instances) and by "
        f"LitServe (`bench/apps/litserve_peer.py`: its documented `LitAPI`, {settings['workers']} workers, "
        + ("batching off" if settings["litserve_max_batch"] <= 1
           else f"batching up to {settings['litserve_max_batch']}")
        + "), each decoding the photo with the same `decode_image` and recorded input recipe and running the file "
        f"through the same LiteRT runner; plus pocketcnn's floor (`bench/apps/floor.py`). `{settings['wrk']}`, "
        f"{settings['rounds']} slices per app taken in turn (median slice). pocketcnn is asked in each peer's own "
        "body: the V2 binary BYTES tensor Triton receives, the base64 JSON LitServe receives, and the multipart "
        "upload of the page.",
        "",
        "| input | c | pocketcnn multipart | pocketcnn V2 | Triton | pocketcnn JSON | LitServe | floor | "
        "pocketcnn vs better peer | p99 pocketcnn / better peer | pocketcnn / floor | floor vs better peer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in report["comparisons"]:
        key = (c["image"], c["concurrency"])
        rps = {app: by[(app, *key)]["requests_per_second"] for app in
               ("pocketcnn_multipart", "pocketcnn_v2", "triton", "pocketcnn_json", "litserve", "floor_model")}
        ours, theirs = c[f"p99_ms_{SAME_BODY[c['better_peer']]}_vs_{c['better_peer']}"]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(f"{rps[a]:,.0f}" for a in rps)
                     + f" | {c['vs_better_peer']:.2f}× ({c['better_peer']}) | {ours:.1f} / {theirs:.1f} ms | "
                       f"{c['multipart_vs_floor'] * 100:.0f} % | {c['floor_vs_better_peer']:.2f}× |")
    worst = min(c["vs_better_peer"] for c in report["comparisons"])
    floor = min(c["multipart_vs_floor"] for c in report["comparisons"])
    lines += ["", f"Worst case: pocketcnn {worst:.2f}× the better peer (target ≥ 2×), "
                  f"{floor * 100:.0f} % of its floor (target ≥ 90 %). Largest probability difference from pocketcnn's "
                  "answer: " + ", ".join(f"{app} {diff:.1e}" for app, diff in report["agreement"]["png_28x28"].items()
                                         if app != "pocketcnn_v2") + " (28×28 PNG).", ""]
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
