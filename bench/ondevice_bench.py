"""On the device, measured on a published version:

  - each .tflite's size with its standard TFLite Model Metadata (as published) and without it;
  - MediaPipe Tasks' ImageClassifier (.venv-mediapipe) against LiteRT on the same RGB file, per image;
  - the web page classifying on the device (headless Chromium, onnxruntime-web, WebAssembly, one thread) against
    the round trip to /predict from the same page, per 640x480 JPEG photo; and the in-browser model alone.

    python -m bench.ondevice_bench --version bench/models/fashion_mnist/3 --out bench/results/ondevice.json
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.browser import headless_chromium
from bench.product_photos import product_photo
from contract import read_manifest
from contract.runtime import open_runner
from export import tflite_files

ROOT = Path(__file__).resolve().parent.parent
MEDIAPIPE_PYTHON = ROOT / ".venv-mediapipe" / "bin" / "python"


def sizes(version: Path, manifest: dict) -> dict:
    found = {}
    for key, artifact in manifest["artifacts"].items():
        if artifact["format"] == "tflite":
            data = (version / artifact["file"]).read_bytes()
            found[key] = {"with_metadata": len(data), "without": len(tflite_files.without_metadata(data))}
    return found


def litert_seconds(path: Path, image: np.ndarray, runs: int) -> float:
    runner = open_runner(path, "litert")
    for _ in range(20):
        runner.predict(image)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        runner.predict(image)
        timings.append(time.perf_counter() - started)
    return float(np.median(timings))


def mediapipe_vs_litert(version: Path, manifest: dict, images: np.ndarray, runs: int) -> dict:
    found = {}
    with tempfile.TemporaryDirectory() as scratch:
        pixels = Path(scratch) / "pixels.npy"
        np.save(pixels, np.repeat(images, 3, axis=-1))
        for key, artifact in manifest["artifacts"].items():
            if not artifact.get("mediapipe_ready"):
                continue
            out = Path(scratch) / f"{key}.npz"
            subprocess.run([str(MEDIAPIPE_PYTHON), "-m", "clients.mediapipe_app", "--scores",
                            str(version / artifact["file"]), str(pixels), str(out), "--latency-runs", str(runs)],
                           cwd=ROOT, check=True, capture_output=True)
            mediapipe = float(np.load(out)["seconds_per_image"])
            litert = litert_seconds(version / artifact["file"], np.repeat(images[:1], 3, axis=-1), runs)
            found[key] = {"mediapipe_ms": mediapipe * 1000, "litert_ms": litert * 1000, "ratio": mediapipe / litert}
    return found


def in_browser(version: Path, photos: list[bytes], runs: int) -> dict:
    """Per photo, median over `runs`: the page classifying on the device (decode, recipe, model, detector), the
    model alone, and the page's round trip to /predict (the service on this machine, serving the same ONNX file)."""
    from serve.testing import GunicornServer

    repository = version.parent.parent
    server = GunicornServer(repository, env={"POCKETCNN_MODEL_FORMAT": "onnx",
                                             "POCKETCNN_MODEL_NAME": version.parent.name}).start()
    try:
        with tempfile.TemporaryDirectory(prefix="pocketcnn-chromium-") as profile:
            driver = headless_chromium(profile)
            try:
                driver.get(server.url + "/")
                driver.set_script_timeout(600)
                return driver.execute_async_script("""
                    const done = arguments[arguments.length - 1];
                    const [photos, runs] = [arguments[0], arguments[1]];
                    const median = (v) => v.slice().sort((a, b) => a - b)[Math.floor(v.length / 2)];
                    (async () => {
                      const started = performance.now();
                      const device = await (await import('./ondevice/device.mjs')).loadDevice();
                      const loadMs = performance.now() - started;
                      const blobs = photos.map((b64) => new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))],
                                                                 {type: 'image/jpeg'}));
                      const here = [], model = [], there = [];
                      const pixels = new Uint8Array(28 * 28);
                      for (let r = 0; r < runs; r++) {
                        for (const blob of blobs) {
                          let t = performance.now(); await device.classify(blob); here.push(performance.now() - t);
                          t = performance.now(); await device.run(pixels); model.push(performance.now() - t);
                          const form = new FormData(); form.append('image', blob, 'photo.jpg');
                          t = performance.now(); await (await fetch('predict', {method: 'POST', body: form})).json();
                          there.push(performance.now() - t);
                        }
                      }
                      return {load_ms: loadMs, on_device_ms: median(here), model_only_ms: median(model),
                              predict_round_trip_ms: median(there), photos: blobs.length, runs,
                              runtime: device.info};
                    })().then(done, (err) => done({error: String(err)}));""",
                    [base64.b64encode(p).decode() for p in photos], runs)
            finally:
                driver.quit()
    finally:
        server.stop()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.ondevice_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", type=Path, required=True, help="a published version folder")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ondevice.json")
    parser.add_argument("--runs", type=int, default=300, help="timed calls per MediaPipe/LiteRT measurement")
    args = parser.parse_args(argv)
    from train.data import load_fashion_mnist

    _, _, x_test, _ = load_fashion_mnist()
    manifest = read_manifest(args.version)
    results = {"version": str(args.version), "sizes": sizes(args.version, manifest)}
    if MEDIAPIPE_PYTHON.exists():
        results["mediapipe"] = mediapipe_vs_litert(args.version, manifest, x_test[:50], args.runs)
    photos = [product_photo(x_test[i], seed=i) for i in range(10)]
    results["browser"] = in_browser(args.version, photos, runs=5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
