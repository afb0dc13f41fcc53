"""Serving benchmark: wrk against five apps under the same gunicorn settings, measured in turn.

  pocketcnn     the service (serve:create_app())
  ceiling       same Flask + gunicorn, reads the upload, answers a fixed JSON (bench/apps/ceiling.py)
  floor_decode  the ceiling plus decode_image (bench/apps/floor.py): what any service must add at least
  floor_model   the ceiling plus decode_image and the served model file: the most a service with this
                model can reach (pocketcnn minus its own overhead)
  tutorial      Flask + keras.models.load_model + model.predict per request (bench/apps/tutorial.py)

    python -m bench.serve_bench --models bench/models --keras-model runs/latest/best.keras
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from contract.formats import FORMATS
from serve.settings import DEFAULT_FORMAT
from serve.testing import GunicornServer, http_get

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "wrk_multipart.lua"


def make_images(folder: Path, fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist") -> dict[str, Path]:
    """The two benchmark inputs: a real 28x28 Fashion-MNIST test image as PNG, and a 640x480 JPEG
    photo of a real Fashion-MNIST garment (upscaled, dark on a light, textured background)."""
    from train.data import read_idx

    folder.mkdir(parents=True, exist_ok=True)
    images = read_idx(Path(fashion_mnist_dir) / "t10k-images-idx3-ubyte.gz")
    png = folder / "fashion_28x28.png"
    Image.fromarray(images[0]).save(png, format="PNG")
    rng = np.random.default_rng(0)
    background = np.clip(200 + rng.normal(0, 12, (480, 640, 3)).cumsum(axis=1) / 40, 0, 255)
    garment = np.asarray(Image.fromarray(images[0]).resize((420, 420), Image.Resampling.BICUBIC), dtype=np.float64)
    tint = np.array([0.55, 0.35, 0.25])
    region = background[30:450, 110:530]
    alpha = (garment / 255.0)[..., None]
    background[30:450, 110:530] = region * (1 - alpha) + (255 - garment)[..., None] * tint * alpha
    jpeg = folder / "photo_640x480.jpg"
    Image.fromarray(background.astype(np.uint8), "RGB").save(jpeg, format="JPEG", quality=90)
    return {"png_28x28": png, "jpeg_640x480": jpeg}


class Server(GunicornServer):
    """An app under pocketcnn's gunicorn settings, started only once every worker takes connections and
    20 fresh connections in a row found it ready (else the first worker would get every connection)."""

    def __init__(self, app: str, env: dict, workers: int, threads: int):
        super().__init__(env=env, workers=workers, threads=threads, app=app,
                         log_path=Path(f"/tmp/pocketcnn-bench-{app.split(':')[0]}-{os.getpid()}-{id(self)}.log"))

    def start(self, wait: str = "/readyz", timeout: float = 300.0) -> "Server":
        started = time.monotonic()
        super().start(wait=None)
        self.wait_every_worker("taking connections", timeout)  # serve.gunicorn_worker logs it once loaded
        in_a_row = 0
        while in_a_row < 20:
            self.check_running()
            try:
                in_a_row = in_a_row + 1 if http_get(self.url + wait, timeout=2)[0] == 200 else 0
                continue
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                in_a_row = 0
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{self.app} not ready after {timeout} s")
            time.sleep(0.02)
        self.ready_seconds = time.monotonic() - started
        return self


def warm_up(url: str, image: Path, count: int = 20) -> None:
    body, content_type = multipart(image)
    for _ in range(count):
        request = urllib.request.Request(url + "/predict", data=body, headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200


def multipart(image: Path) -> tuple[bytes, str]:
    boundary = "pocketcnnwarmup"
    kind = "image/jpeg" if image.suffix == ".jpg" else "image/png"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"\r\n'
            f"Content-Type: {kind}\r\n\r\n").encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def cpu_seconds(pids: list[str]) -> float:
    """User + system CPU time the processes have used so far (/proc/<pid>/stat)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(url: str, image: Path, connections: int, seconds: float, worker_pids: list[str]) -> dict:
    """One wrk slice, with the CPU time the workers spent per request (ms): under load that is what throughput
    divides, and it shows where a service's cost goes better than wall time can."""
    cpu_before = cpu_seconds(worker_pids)
    result = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", "-s", str(LUA),
                             url + "/predict"], env=dict(os.environ, FILE=str(image)),
                            capture_output=True, text=True, timeout=seconds + 60)
    line = next(line for line in result.stdout.splitlines() if line.startswith("WRK_JSON "))
    stats = json.loads(line[len("WRK_JSON "):])
    stats["requests_per_second"] = round(stats["requests"] / stats["seconds"], 1)
    if stats["requests"]:
        stats["worker_cpu_ms_per_request"] = round(
            (cpu_seconds(worker_pids) - cpu_before) * 1000 / stats["requests"], 3)
    return stats


def interleaved(servers: dict[str, Server], image: Path, connections: int, seconds: float, rounds: int) -> dict:
    """wrk against every server in turn, `rounds` times, the order rotated each round.

    This machine's speed drifts by up to 2x within a minute (other tenants of the host). Measuring one
    app for a minute, then the next, would compare the drift; slices of a few seconds taken in turn put
    every app through the same weather, and each round gives a ratio between neighbours in time."""
    names = list(servers)
    slices: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            pids = servers[name].worker_pids()
            slices[name].append(wrk(servers[name].url, image, connections, seconds, pids))
            wait_until_idle(pids)
    return {name: summarize(runs) for name, runs in slices.items()}


def wait_until_idle(pids: list[str], timeout: float = 60.0) -> None:
    """Wait until the workers have stopped using the CPU. When wrk stops, a slow app still has the requests of
    every open connection to finish: the tutorial way at c=32 kept a core busy for seconds after its slice, and
    the slice after it (another app's) ran on what was left. On 2026-11-27 that made 3 of pocketcnn's 5
    PNG c=32 slices half as fast as the other 2."""
    deadline = time.monotonic() + timeout
    quiet = 0
    before = cpu_seconds(pids)
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pids)
        quiet = quiet + 1 if now - before < 0.005 else 0  # under 5 % of a core for 0.1 s, twice in a row
        before = now


def summarize(runs: list[dict]) -> dict:
    """The median slice (by throughput) stands for the app; every slice's throughput is kept."""
    ordered = sorted(runs, key=lambda r: r["requests_per_second"])
    middle = dict(ordered[len(ordered) // 2])
    middle["slices_requests_per_second"] = [r["requests_per_second"] for r in runs]
    cpu = sorted(r["worker_cpu_ms_per_request"] for r in runs if "worker_cpu_ms_per_request" in r)
    if cpu:
        middle["worker_cpu_ms_per_request"] = cpu[len(cpu) // 2]  # the median over the slices
    middle["non_2xx"] = sum(r["non_2xx"] for r in runs)
    middle["socket_errors"] = sum(r["socket_errors"] for r in runs)
    middle["requests"] = sum(r["requests"] for r in runs)
    return middle


def median_ratio(ours: dict, theirs: dict) -> float:
    """Median over rounds of ours / theirs, each ratio taken within one round."""
    ratios = sorted(a / b for a, b in zip(ours["slices_requests_per_second"], theirs["slices_requests_per_second"],
                                          strict=True))
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


def served_artifact(url: str, models: Path) -> Path:
    """The model file the running service serves, from its GET /model."""
    with urllib.request.urlopen(url + "/model", timeout=10) as response:
        info = json.load(response)
    served = info["served"]
    return (Path(models) / served["name"] / str(served["version"])
            / info["manifest"]["artifacts"][served["format"]]["file"])


def ready_times(env: dict, repeats: int, workers: int, threads: int) -> list[float]:
    times = []
    for _ in range(repeats):
        with Server("serve:create_app()", env, workers, threads) as server:
            times.append(round(server.ready_seconds, 2))
    return times


# Which format to serve by default: every one the serving install can run, of the trained model itself.
FORMATS_COMPARED = tuple(k for k, f in FORMATS.items() if not f.needs_tensorflow and f.source == "keras")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="model repository with a published version")
    parser.add_argument("--keras-model", required=True, help="best.keras for the tutorial baseline")
    parser.add_argument("--seconds", type=int, default=4, help="wrk duration of one slice")
    parser.add_argument("--rounds", type=int, default=5, help="slices per app and measurement, taken in turn")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = parser.parse_args(argv)
    images = make_images(args.out.parent / "images")
    concurrencies = (1, 8, 32)
    model_env = {"POCKETCNN_MODEL_REPOSITORY": str(Path(args.models).resolve()), "POCKETCNN_POLL_SECONDS": "0"}
    apps = {
        "pocketcnn": ("serve:create_app()", model_env),
        "ceiling": ("bench.apps.ceiling:app", {}),
        "floor_decode": ("bench.apps.floor:app", {"POCKETCNN_FLOOR_DECODE_ONLY": "1"}),
        "floor_model": ("bench.apps.floor:app", {}),  # both floors get POCKETCNN_FLOOR_MODEL (pocketcnn's file) below
        "tutorial": ("bench.apps.tutorial:app", {"POCKETCNN_TUTORIAL_MODEL": str(Path(args.keras_model).resolve())}),
    }
    report = {"served_format": DEFAULT_FORMAT,
              "settings": {"workers": args.workers, "threads": args.threads, "worker_class": "gthread",
                           "wrk": f"wrk -t1 -c{{1,8,32}} -d{args.seconds:g}s", "rounds": args.rounds,
                           "cores": os.cpu_count()},
              "runs": [], "ratios": []}
    print(f"Serving benchmark: {args.rounds} rounds of {args.seconds} s per app, apps in turn (requests/s)", flush=True)
    with contextlib.ExitStack() as stack:
        servers = {"pocketcnn": stack.enter_context(Server(*apps["pocketcnn"], args.workers, args.threads))}
        artifact = served_artifact(servers["pocketcnn"].url, Path(args.models).resolve())
        for floor in ("floor_decode", "floor_model"):
            apps[floor][1]["POCKETCNN_FLOOR_MODEL"] = str(artifact)
        report["floor_model_file"] = str(artifact.relative_to(Path(args.models).resolve()))
        for name, (app, env) in apps.items():
            if name not in servers:
                servers[name] = stack.enter_context(Server(app, env, args.workers, args.threads))
        report["ready_seconds_first_start"] = {name: round(s.ready_seconds, 2) for name, s in servers.items()}
        for image_name, image in images.items():
            for server in servers.values():
                warm_up(server.url, image)
            for connections in concurrencies:
                results = interleaved(servers, image, connections, args.seconds, args.rounds)
                for name, stats in results.items():
                    report["runs"].append({"app": name, "image": image_name, "concurrency": connections, **stats})
                ratio = {"image": image_name, "concurrency": connections,
                         "vs_ceiling": round(median_ratio(results["pocketcnn"], results["ceiling"]), 4),
                         "vs_tutorial": round(median_ratio(results["pocketcnn"], results["tutorial"]), 2),
                         "vs_floor_model": round(median_ratio(results["pocketcnn"], results["floor_model"]), 4),
                         "floor_decode_vs_ceiling": round(median_ratio(results["floor_decode"], results["ceiling"]), 4),
                         "floor_model_vs_ceiling": round(median_ratio(results["floor_model"], results["ceiling"]), 4)}
                report["ratios"].append(ratio)
                print(f"  {image_name:<13} c={connections:<3} " + "  ".join(
                    f"{name} {stats['requests_per_second']:>7,.1f}" for name, stats in results.items())
                    + f"  | {ratio['vs_ceiling'] * 100:.0f} % of the ceiling (floors: decode "
                    + f"{ratio['floor_decode_vs_ceiling'] * 100:.0f} %, decode + model "
                      f"{ratio['floor_model_vs_ceiling'] * 100:.0f} %), "
                    + f"{ratio['vs_tutorial']:.0f}x the tutorial; "
                    + "worker CPU {} vs {} ms/request".format(*(results[app].get("worker_cpu_ms_per_request")
                                                               for app in ("pocketcnn", "ceiling"))),
                    flush=True)
        report["worker_rss_mb"] = {name: [round(v, 1) for v in s.worker_rss_mb()] for name, s in servers.items()}
    report["ready_seconds"] = ready_times(model_env, 3, args.workers, args.threads)

    # Which format to serve by default: every one against the ceiling, in turn, on the small PNG.
    with contextlib.ExitStack() as stack:
        servers = {"ceiling": stack.enter_context(Server(*apps["ceiling"], args.workers, args.threads))}
        for fmt in FORMATS_COMPARED:
            servers[fmt] = stack.enter_context(Server("serve:create_app()",
                                                      {**model_env, "POCKETCNN_MODEL_FORMAT": fmt},
                                                      args.workers, args.threads))
        for server in servers.values():
            warm_up(server.url, images["png_28x28"])
        results = interleaved(servers, images["png_28x28"], 8, args.seconds, args.rounds)
        report["formats_png_c8"] = {fmt: {"requests_per_second": results[fmt]["requests_per_second"],
                                          "vs_ceiling": round(median_ratio(results[fmt], results["ceiling"]), 4)}
                                    for fmt in FORMATS_COMPARED}
        print("  formats, png_28x28 c=8: " + "  ".join(
            f"{fmt} {v['requests_per_second']:,.0f} ({v['vs_ceiling'] * 100:.0f} %)"
            for fmt, v in report["formats_png_c8"].items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
