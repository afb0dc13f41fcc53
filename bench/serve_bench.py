"""Serving benchmark: wrk against three apps under the same gunicorn settings.

  pocketcnn  the service (serve:create_app())
  ceiling    same Flask + gunicorn, reads the upload, answers a fixed JSON (bench/apps/ceiling.py)
  tutorial   Flask + keras.models.load_model + model.predict per request (bench/apps/tutorial.py)

    python -m bench.serve_bench --models bench/models --keras-model runs/latest/best.keras
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "wrk_multipart.lua"
GUNICORN = str(Path(sys.executable).parent / "gunicorn")


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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, app: str, env: dict, workers: int, threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, POCKETCNN_BIND=f"127.0.0.1:{self.port}", POCKETCNN_WORKERS=str(workers),
                        POCKETCNN_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="2", **env)
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.app = app
        self.process = None
        self.ready_seconds = None

    def __enter__(self):
        started = time.monotonic()
        self.log = open(f"/tmp/pocketcnn-bench-{self.port}.log", "w")
        self.process = subprocess.Popen([GUNICORN, "-c", "python:serve.gunicorn_conf", self.app], cwd=ROOT,
                                        env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        in_a_row = 0  # every worker must be ready: ask until 20 fresh connections in a row get 200
        while in_a_row < 20:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.app} exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                    in_a_row = in_a_row + 1 if response.status == 200 else 0
                    continue
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                in_a_row = 0
            if time.monotonic() - started > 300:
                raise TimeoutError(f"{self.app} not ready after 300 s")
            time.sleep(0.02)
        self.ready_seconds = time.monotonic() - started
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(30)
        self.log.close()

    def worker_rss_mb(self) -> list[float]:
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout.split()
        sizes = []
        for pid in children:
            status = Path(f"/proc/{pid}/status").read_text()
            sizes.append(int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024)
        return sizes


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


def wrk(url: str, image: Path, connections: int, seconds: float) -> dict:
    result = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", "-s", str(LUA),
                             url + "/predict"], env=dict(os.environ, FILE=str(image)),
                            capture_output=True, text=True, timeout=seconds + 60)
    line = next(line for line in result.stdout.splitlines() if line.startswith("WRK_JSON "))
    stats = json.loads(line[len("WRK_JSON "):])
    stats["requests_per_second"] = round(stats["requests"] / stats["seconds"], 1)
    return stats


def bench_app(name: str, app: str, env: dict, images: dict[str, Path], concurrencies, seconds: float,
              workers: int, threads: int) -> dict:
    results = {"app": app, "runs": []}
    with Server(app, env, workers, threads) as server:
        results["ready_seconds"] = round(server.ready_seconds, 2)
        for image_name, image in images.items():
            warm_up(server.url, image)
            for connections in concurrencies:
                stats = wrk(server.url, image, connections, seconds)
                stats.update(image=image_name, concurrency=connections)
                results["runs"].append(stats)
                print(f"  {name:<10} {image_name:<13} c={connections:<3} {stats['requests_per_second']:>8.1f} req/s  "
                      f"p50 {stats['p50_ms']:.2f} ms  p99 {stats['p99_ms']:.2f} ms  non-2xx {stats['non_2xx']}",
                      flush=True)
        results["worker_rss_mb"] = [round(v, 1) for v in server.worker_rss_mb()]
    return results


def ready_times(env: dict, repeats: int, workers: int, threads: int) -> list[float]:
    times = []
    for _ in range(repeats):
        with Server("serve:create_app()", env, workers, threads) as server:
            times.append(round(server.ready_seconds, 2))
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="model repository with a published version")
    parser.add_argument("--keras-model", required=True, help="best.keras for the tutorial baseline")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per measurement")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = parser.parse_args(argv)
    images = make_images(args.out.parent / "images")
    concurrencies = (1, 8, 32)
    model_env = {"POCKETCNN_MODEL_REPOSITORY": str(Path(args.models).resolve()), "POCKETCNN_POLL_SECONDS": "0"}
    report = {"settings": {"workers": args.workers, "threads": args.threads, "worker_class": "gthread",
                           "wrk": f"wrk -t1 -c{{1,8,32}} -d{args.seconds:g}s", "cores": os.cpu_count()}}
    print("Serving benchmark (requests/s, higher is better)", flush=True)
    report["pocketcnn"] = bench_app("pocketcnn", "serve:create_app()", model_env, images, concurrencies,
                                    args.seconds, args.workers, args.threads)
    report["ceiling"] = bench_app("ceiling", "bench.apps.ceiling:app", {}, images, concurrencies, args.seconds,
                                  args.workers, args.threads)
    report["tutorial"] = bench_app("tutorial", "bench.apps.tutorial:app",
                                   {"POCKETCNN_TUTORIAL_MODEL": str(Path(args.keras_model).resolve())},
                                   images, concurrencies, args.seconds, args.workers, args.threads)
    report["ready_seconds"] = ready_times(model_env, 3, args.workers, args.threads)
    formats = {}
    for fmt in ("tflite_float32", "tflite_dynamic", "tflite_int8", "onnx"):
        result = bench_app(fmt, "serve:create_app()", {**model_env, "POCKETCNN_MODEL_FORMAT": fmt},
                           {"png_28x28": images["png_28x28"]}, (8,), args.seconds, args.workers, args.threads)
        formats[fmt] = result["runs"][0]["requests_per_second"]
    report["formats_png_c8"] = formats
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
