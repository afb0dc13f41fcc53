"""The full install on every Python the project supports (requires-python: 3.11 to 3.13), proven by a real run:
for 3.12 and 3.13 (pyenv's interpreters; 3.11 is .venv itself), a fresh virtual environment with
`pip install -c constraints.txt '.[train,export,serve]'` (several GB: why it is here and not in `make test`,
whose serving-install test covers 3.12 and 3.13 too), then, in it:

  1. python -m train    1 epoch on 3,000 real Fashion-MNIST images;
  2. python -m export   tflite_int8, tflite_int8_rgb and onnx, every gate (QAT included: tfmot in its own process);
  3. the service's own code classifies a held-out PNG, and the answer equals the run's on 3.11 for the same file.

    python -m bench.python_versions [--out bench/results/python_versions.json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "constraints.txt", "README.md", "contract", "serve", "clients", "export",
           "train")
TRAIN = ["--train-limit", "3000", "--test-limit", "1000", "--epochs", "1", "--filters", "16,32", "--dense-units", "64",
         "--train-sample-size", "1000", "--precision", "float32", "--augment", "false"]
CLASSIFY = """
import json, sys
from serve import create_app
app = create_app({"MODEL_REPOSITORY": sys.argv[1], "MODEL_FORMAT": "onnx", "LOAD_IN_BACKGROUND": False,
                  "POLL_SECONDS": 0})
with open(sys.argv[2], "rb") as photo:
    answer = app.test_client().post("/predict", data=photo.read(), content_type="image/png").get_json()
print(json.dumps({"version": sys.version.split()[0], "top": answer["predictions"][0]}))
"""


def interpreters() -> dict[str, str]:
    found = {}
    for minor in ("3.12", "3.13"):
        candidates = sorted((Path.home() / ".pyenv" / "versions").glob(f"{minor}.*/bin/python3"), reverse=True)
        python = str(candidates[0]) if candidates else shutil.which(f"python{minor}")
        if python:
            found[minor] = python
    return found


def step(command: list[str], cwd: Path, log, timeout: int) -> float:
    started = time.monotonic()
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    done = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} exited {done.returncode}")
    return round(time.monotonic() - started, 1)


def copy_sources(names, destination: Path) -> None:
    """The project's files and folders `names` into `destination`, as an install from a clean checkout sees them:
    without this interpreter's compiled files and caches (what .dockerignore also keeps out)."""
    for name in names:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, destination / name, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        else:
            shutil.copy(ROOT / name, destination / name)


def try_version(minor: str, python: str, work: Path, photo: Path) -> dict:
    source = work / "src"
    source.mkdir(parents=True)
    copy_sources(SOURCES, source)
    venv = work / "venv"
    result: dict = {"python": python, "seconds": {}}
    with open(work / "log.txt", "w") as log:
        try:
            result["seconds"]["venv"] = step([python, "-m", "venv", str(venv)], source, log, 300)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            result["seconds"]["install"] = step([*pip, "-c", "constraints.txt", ".[train,export,serve]"], source, log,
                                                3600)
            py = str(venv / "bin" / "python")
            result["seconds"]["train"] = step([py, "-m", "train", *TRAIN, "--runs-dir", str(work / "runs"),
                                               "--run-name", "check"], source, log, 3600)
            result["seconds"]["export"] = step([py, "-m", "export", str(work / "runs" / "check"), "--models-dir",
                                                str(work / "models"), "--formats", "tflite_int8,tflite_int8_rgb,onnx",
                                                "--qat", "--max-ece", "0.1", "--quiet"], source, log, 3600)
            answer = subprocess.run([py, "-c", CLASSIFY, str(work / "models"), str(photo)], cwd=work,
                                    capture_output=True, text=True, timeout=600)
            if answer.returncode != 0:
                raise RuntimeError(answer.stderr[-2000:])
            result.update(json.loads(answer.stdout.strip().splitlines()[-1]))
            # The files made on this version, served by .venv (3.11): the same answer.
            here = subprocess.run([sys.executable, "-c", CLASSIFY, str(work / "models"), str(photo)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=600)
            result["same_answer_on_3.11"] = json.loads(here.stdout.strip().splitlines()[-1])["top"] == result["top"]
            result["passed"] = result["same_answer_on_3.11"]
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            result.update(passed=False, error=str(err))
    result["log_tail"] = (work / "log.txt").read_text()[-1500:]
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.python_versions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "python_versions.json")
    parser.add_argument("--keep", action="store_true", help="keep the environments (in a temporary folder)")
    args = parser.parse_args(argv)
    from contract.image import png_bytes
    from train.data import load_fashion_mnist

    _, _, x, _ = load_fashion_mnist()
    scratch = Path(tempfile.mkdtemp(prefix="pocketcnn-pythons-"))
    photo = scratch / "held_out.png"
    photo.write_bytes(png_bytes(x[0]))
    results = {}
    try:
        for minor, python in interpreters().items():
            print(f"Python {minor}: {python}", flush=True)
            results[minor] = try_version(minor, python, scratch / minor, photo)
            print(f"  {'passed' if results[minor]['passed'] else 'FAILED'} {results[minor]['seconds']}"
                  f" {results[minor].get('top', results[minor].get('error'))}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(0 if all(r["passed"] for r in main().values()) else 1)
