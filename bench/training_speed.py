"""Training speed against what the CPU can do, and `make run`'s first run, for `make bench`:

  - the CPU: its model name and the flags that decide TensorFlow's kernels (AVX2, AVX-512, bfloat16, AMX);
  - its peak float32 rate, measured: a 4096 x 4096 matrix multiply (numpy's BLAS) on every core, best of 5;
  - the model's multiply-adds per image (conv and dense layers, from the model itself), so that a training
    throughput becomes a share of the peak: 6 floating-point operations per multiply-add and image (2 forward,
    4 backward: the gradients of the inputs and of the weights);
  - `make run` on a machine without a model: the quick recipe trained, exported with every gate, served; minutes
    from the start to the first ready answer.

    python -m bench.training_speed --run bench/runs/<id> [--first-run] [--out bench/results/training_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FLOPS_PER_MAC_TRAINING = 6
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> dict:
    text = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = set(re.search(r"^flags\s*:\s*(.+)$", text, re.M).group(1).split()) if "flags" in text else set()
    return {"model": model.group(1).strip() if model else "unknown", "cores": os.cpu_count(),
            "flags": {flag: flag in flags for flag in FLAGS}}


def peak_gflops(size: int = 4096, repeats: int = 5) -> float:
    """float32 GFLOP/s of numpy's matrix multiply on every core (2 size^3 operations), the best of `repeats`."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    a @ b  # warm-up: threads, caches
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


def model_macs(model) -> int:
    """Multiply-adds of one forward pass: each Conv2D (output positions x kernel area x in x out channels) and
    Dense (in x out) layer, nested models included."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D):
            _, height, width, channels = layer.output.shape
            kernel_height, kernel_width = layer.kernel_size
            total += height * width * kernel_height * kernel_width * int(layer.input.shape[-1]) * channels
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.input.shape[-1]) * layer.units
    return int(total)


def training_share(run: Path, peak: float) -> dict:
    import keras

    metrics = json.loads((run / "metrics.json").read_text())
    model = keras.models.load_model(run / "best.keras", safe_mode=True)
    macs = model_macs(model)
    achieved = FLOPS_PER_MAC_TRAINING * macs * metrics["train_images_per_second"] / 1e9
    return {"macs_per_image": macs, "images_per_second": metrics["train_images_per_second"],
            "achieved_gflops": achieved, "share_of_peak": achieved / peak}


def first_run(timeout: float = 1800) -> dict:
    """`make run` in a scratch folder with no model: minutes until the service answers /readyz, and what it made."""
    from serve.testing import free_port, http_get

    scratch = Path(tempfile.mkdtemp(prefix="pocketcnn-first-run-"))
    runs, models, port = scratch / "runs", scratch / "models", free_port()
    log = scratch / "make-run.log"
    started = time.monotonic()
    with open(log, "w") as output:
        process = subprocess.Popen(["make", "--no-print-directory", "run", f"RUNS={runs}", f"MODELS={models}",
                                    f"PORT={port}"], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    ready_after = None
    try:
        while process.poll() is None and time.monotonic() - started < timeout:
            try:
                if http_get(f"http://127.0.0.1:{port}/readyz", timeout=2)[0] == 200:
                    ready_after = time.monotonic() - started
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            process.wait(60)
    metrics = json.loads((runs / "latest" / "metrics.json").read_text()) if (runs / "latest").exists() else {}
    manifest_path = next(models.glob("*/*/manifest.json"), None)
    manifest = json.loads(manifest_path.read_text()) if manifest_path else {}
    return {"minutes_to_ready": round(ready_after / 60, 2) if ready_after else None,
            "training_minutes": round(metrics.get("training_seconds", 0) / 60, 2) or None,
            "test_accuracy": metrics.get("test_accuracy"), "epochs": metrics.get("epochs_run"),
            "exported": bool(manifest), "calibration": manifest.get("calibration"),
            "ood_test_flag_rate": (manifest.get("ood") or {}).get("test_flag_rate"),
            "log_tail": log.read_text()[-2000:]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.training_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the benchmark's trained run folder")
    parser.add_argument("--first-run", action="store_true", help="also time `make run` with no model (minutes)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "training_speed.json")
    args = parser.parse_args(argv)
    results = {"cpu": cpu(), "peak_gflops": peak_gflops()}
    results["recipe"] = training_share(args.run, results["peak_gflops"])
    if args.first_run:
        results["first_run"] = first_run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "first_run"}, indent=2))
    return results


if __name__ == "__main__":
    main()
