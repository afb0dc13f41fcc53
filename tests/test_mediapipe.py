"""The .tflite files as apps load them: MediaPipe Tasks' ImageClassifier (Google's code, in .venv-mediapipe, made
by `make mediapipe`) reads the standard TFLite Model Metadata export writes, with no help from pocketcnn."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, answers, png_bytes

from bench.product_photos import product_photo
from contract import read_manifest
from contract.runtime import open_runner

pytestmark = pytest.mark.slow

MEDIAPIPE_PYTHON = ROOT / ".venv-mediapipe" / "bin" / "python"
IMAGES = 500


@pytest.fixture(scope="module")
def mediapipe_python() -> Path:
    if not MEDIAPIPE_PYTHON.exists():
        pytest.skip("no .venv-mediapipe: make mediapipe (make test makes it)")
    return MEDIAPIPE_PYTHON


@pytest.fixture(scope="module")
def manifest(published_version) -> dict:
    return read_manifest(published_version)


@pytest.fixture(scope="module")
def held_out(fashion_mnist_test, tmp_path_factory) -> tuple[np.ndarray, np.ndarray, Path]:
    """Held-out test images at the model's size (MediaPipe resizes nothing), saved for the MediaPipe process."""
    x, y = fashion_mnist_test
    x, y = x[-IMAGES:], y[-IMAGES:]
    path = tmp_path_factory.mktemp("mediapipe") / "pixels.npy"
    np.save(path, x)
    return x, y, path


def mediapipe_scores(python: Path, model: Path, pixels: Path, out: Path) -> dict:
    done = subprocess.run([str(python), "-m", "clients.mediapipe_app", "--scores", str(model), str(pixels), str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = np.load(out)
    return {"scores": found["scores"], "labels": [str(v) for v in found["labels"]]}


def test_every_mediapipe_ready_file_is_loaded_by_mediapipe_with_its_labels_and_litert_scores(
        mediapipe_python, published_version, manifest, held_out, live_server, tmp_path):
    x, _, pixels = held_out
    ready = {key: a for key, a in manifest["artifacts"].items() if a.get("mediapipe_ready")}
    assert set(ready) == {"tflite_float32_rgb", "tflite_int8_rgb"}, "a greyscale model's RGB variants"
    served = [a["predictions"][0]["index"] for a in answers(live_server, [png_bytes(image) for image in x])]
    for key, artifact in ready.items():
        path = published_version / artifact["file"]
        found = mediapipe_scores(mediapipe_python, path, pixels, tmp_path / f"{key}.npz")
        assert found["labels"] == manifest["labels"], "label names read from the file's own metadata"
        assert not np.isnan(found["scores"]).any(), "every class comes back"
        litert = open_runner(path, "litert").predict(np.repeat(x, 3, axis=-1))
        step = artifact["output"]["quantization"]["scale"] if artifact["output"].get("quantization") else 0.0
        tolerance = 1e-6 if artifact["precision"] == "float32" else step * 1.0001
        assert np.abs(found["scores"] - litert).max() <= tolerance, key
        same_top = np.mean(found["scores"].argmax(axis=1) == np.array(served))
        assert same_top >= 0.99, (key, same_top)


def test_the_rgb_files_answer_as_the_greyscale_ones_do(published_version, manifest, held_out):
    """Colour photos: the RGB file equals the greyscale file on Pillow's convert("L") of the photo, exactly, since
    the luma step inside is Pillow's own arithmetic; grey photos (R = G = B) give their grey value back."""
    from PIL import Image

    rng = np.random.default_rng(7)
    x, _, _ = held_out
    colour = np.clip(x[:100, ..., 0, None].astype(int) + rng.integers(-60, 61, (100, 28, 28, 3)), 0, 255).astype(
        np.uint8)
    grey = np.stack([np.asarray(Image.fromarray(image).convert("L"))[..., None] for image in colour])
    for key in ("tflite_float32_rgb", "tflite_int8_rgb"):
        rgb_file = published_version / manifest["artifacts"][key]["file"]
        grey_file = published_version / manifest["artifacts"][manifest["artifacts"][key]["rgb_of"]]["file"]
        rgb_runner, grey_runner = open_runner(rgb_file, "litert"), open_runner(grey_file, "litert")
        assert rgb_runner.input_shape == (28, 28, 3)
        assert np.array_equal(rgb_runner.predict(colour), grey_runner.predict(grey)), key
        assert np.array_equal(rgb_runner.predict(np.repeat(x[:100], 3, axis=-1)), grey_runner.predict(x[:100])), key


def test_greyscale_files_are_refused_by_mediapipe_as_the_manifest_says(mediapipe_python, published_version,
                                                                       manifest, held_out, tmp_path):
    """Why the RGB variants exist: MediaPipe takes 3-channel models only, and the manifest does not claim otherwise."""
    _, _, pixels = held_out
    artifact = manifest["artifacts"]["tflite_float32"]
    assert artifact["mediapipe_ready"] is False
    done = subprocess.run([str(mediapipe_python), "-m", "clients.mediapipe_app", "--scores",
                           str(published_version / artifact["file"]), str(pixels), str(tmp_path / "out.npz")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "RGB" in done.stderr


def test_an_app_applying_the_recipe_before_mediapipe_gets_the_services_answer(mediapipe_python, published_version,
                                                                              fashion_mnist_test, live_server,
                                                                              tmp_path):
    """The README's app flow, run: the bundle's recipe on a phone-like photo, then MediaPipe, gives the service's
    top class for that photo."""
    x, _ = fashion_mnist_test
    agree = 0
    for index in (3, 11, 42):
        photo = tmp_path / f"photo_{index}.jpg"
        photo.write_bytes(product_photo(x[index], seed=index))
        done = subprocess.run([str(mediapipe_python), "-m", "clients.mediapipe_app",
                               str(published_version / "mobile_bundle.zip"), str(photo), "--json",
                               "--model", "model_float32_rgb.tflite"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        app = json.loads(done.stdout)
        assert app["recipe"] == "product_photo" and len(app["categories"]) == 10
        served = answers(live_server, [photo.read_bytes()])[0]
        agree += app["categories"][0]["index"] == served["predictions"][0]["index"]
    assert agree == 3


def test_the_metadata_names_the_model_and_its_recipe(published_version, manifest):
    from clients.ondevice import read_standard_metadata

    for key, artifact in manifest["artifacts"].items():
        if artifact["format"] != "tflite":
            continue
        found = read_standard_metadata((published_version / artifact["file"]).read_bytes())
        assert found["identifier"] == "M001" and found["min_parser_version"] == "1.0.0", key
        assert found["name"] == manifest["name"] and found["labels"] == manifest["labels"], key
        assert found["version"].startswith(manifest["source"]["run"] + "+" + manifest["source"]["model_sha256"][:12])
        assert "product_photo" in found["description"], "the description says which input recipe a photo needs"
        assert (found["name"], found["version"]) == (artifact["metadata"]["name"], artifact["metadata"]["version"])
