"""The reference on-device client (clients/ondevice.py): it decodes photos exactly as the contract does,
runs the bundle's .tflite to the same numbers as the service's runner, reads the labels stored inside
the .tflite, and its self-check passes on a real bundle and fails on doctored ones."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, encode, png_bytes, to_picture
from PIL import Image

from clients import ondevice
from contract import decode_image
from contract.runtime import open_runner

# Tests that need the session's exported model (trained and exported once per session) are marked slow;
# the decoding tests need only real images.

IMAGES = 300  # real test images compared image by image with the contract's runner


@pytest.fixture(scope="module")
def bundle_zip(published_version) -> Path:
    return published_version / "mobile_bundle.zip"


@pytest.fixture(scope="module")
def bundle_folder(bundle_zip, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("extracted-bundle")
    with zipfile.ZipFile(bundle_zip) as archive:
        archive.extractall(folder)
    return folder


def doctored_bundle(source: Path, destination: Path, replace: dict[str, bytes]) -> Path:
    """A copy of the bundle zip with some members' bytes replaced."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as copy:
        for name in original.namelist():
            copy.writestr(name, replace.get(name, original.read(name)))
    return destination


def weight_buffer_span(tflite: bytes) -> tuple[int, int]:
    """(start, length) of the largest constant buffer in a .tflite: the dense layer's weights."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(tflite, 0)
    spans = []
    for index in range(model.BuffersLength()):
        buffer = model.Buffers(index)
        if buffer.DataLength():
            field = buffer._tab.Offset(4)  # the `data` vector of table Buffer
            spans.append((buffer._tab.Vector(field), buffer._tab.VectorLen(field)))
    return max(spans, key=lambda span: span[1])


# --- decoding ------------------------------------------------------------------------------------


def _exif_rotated_jpeg(image: np.ndarray) -> bytes:
    picture = to_picture(image).convert("RGB").resize((120, 80), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return encode(picture, "JPEG", quality=92, exif=exif.tobytes())


def _animated_gif(first: np.ndarray, second: np.ndarray) -> bytes:
    frames = [to_picture(first).convert("P"), to_picture(second).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _transparent_png(image: np.ndarray) -> bytes:
    grey = image.squeeze(-1)
    alpha = np.where(grey > 30, 255, 0).astype(np.uint8)  # the dark background becomes transparent
    return encode(Image.fromarray(np.dstack([grey, grey, grey, alpha]), "RGBA"), "PNG")


def _sixteen_bit_png(image: np.ndarray) -> bytes:
    return encode(Image.fromarray(image.squeeze(-1).astype(np.uint16) * 257), "PNG")


PHOTO_VARIANTS = {
    "png 28x28 grey": lambda x: png_bytes(x[0]),
    "png 200x120 rgb (crop sides)": lambda x: encode(to_picture(x[1]).convert("RGB").resize((200, 120)), "PNG"),
    "jpeg 300x400 (crop top, JPEG draft)": lambda x: encode(to_picture(x[2]).convert("RGB").resize((300, 400)),
                                                            "JPEG", quality=90),
    "png 400x300 rgb (large: resized in two steps)": lambda x: encode(
        to_picture(x[9]).convert("RGB").resize((400, 300), Image.Resampling.BICUBIC), "PNG"),
    "jpeg 1600x1200 (phone-sized: draft, then two steps)": lambda x: encode(
        to_picture(x[10]).convert("RGB").resize((1600, 1200), Image.Resampling.BICUBIC), "JPEG", quality=85),
    "jpeg with EXIF rotation": lambda x: _exif_rotated_jpeg(x[3]),
    "rgba png with transparency": lambda x: _transparent_png(x[4]),
    "animated gif (first frame)": lambda x: _animated_gif(x[5], x[6]),
    "16-bit png": lambda x: _sixteen_bit_png(x[7]),
    "webp 56x56": lambda x: encode(to_picture(x[8]).resize((56, 56)), "WEBP", lossless=True),
}


def test_the_clients_copy_of_the_recipes_is_current(python):
    """clients/ondevice.py carries contract/recipes.py's arithmetic, copied by scripts/sync_ondevice_recipes.py."""
    done = subprocess.run([python, "scripts/sync_ondevice_recipes.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("recipe", ["crop", "pad", "product_photo"])
@pytest.mark.parametrize("variant", PHOTO_VARIANTS)
def test_photos_decode_to_the_same_pixels_as_the_contract(fashion_mnist_test, variant, recipe):
    """The app-side decoder is written separately; it must still give the service's exact pixels, through
    every input recipe."""
    photo = PHOTO_VARIANTS[variant](fashion_mnist_test[0])
    on_device = ondevice.decode_photo(photo, 28, 28, "L", recipe)
    assert on_device.shape == (28, 28, 1) and on_device.dtype == np.uint8
    assert np.array_equal(on_device, decode_image(photo, 28, 28, 1, recipe=recipe))


@pytest.mark.parametrize("channels", [1, 3])
def test_product_photos_decode_to_the_same_pixels_and_clutter_as_the_contract(fashion_mnist_test, channels):
    """Phone-like product photos (bench/product_photos.py) through the on-device copy of product_photo: the same
    bytes as contract.decode_image, and the same border clutter measured on the way."""
    from bench.product_photos import product_photo

    x, _ = fashion_mnist_test
    for index in range(40):
        photo = product_photo(x[index], seed=index)
        ours, theirs = {}, {}
        on_device = ondevice.decode_photo(photo, 28, 28, "L" if channels == 1 else "RGB", "product_photo", ours)
        assert np.array_equal(on_device, decode_image(photo, 28, 28, channels, recipe="product_photo", notes=theirs))
        assert ours == theirs


def test_exif_rotation_is_applied_not_ignored(fashion_mnist_test):
    """The JPEG stores the picture turned a quarter (120x80) with EXIF orientation 6: decoded, it must be the
    picture the right way up, as if it had been stored upright, and not the stored pixels."""
    image = fashion_mnist_test[0][3]
    photo = _exif_rotated_jpeg(image)
    stored = Image.open(io.BytesIO(photo)).convert("L")
    upright = encode(stored.transpose(Image.Transpose.ROTATE_270), "PNG")  # orientation 6, applied by hand
    turned_wrong_way = encode(stored.transpose(Image.Transpose.ROTATE_90), "PNG")
    decoded = ondevice.decode_photo(photo, 28, 28, "L").astype(int)

    def distance(png: bytes) -> float:
        return float(np.abs(decoded - decode_image(png, 28, 28, 1).astype(int)).mean())

    assert distance(upright) < 1.0, "the same pixels as the picture stored upright (JPEG draft aside)"
    assert distance(turned_wrong_way) > 10 * max(distance(upright), 0.5)
    assert distance(encode(stored, "PNG")) > 10 * max(distance(upright), 0.5), "not the stored pixels"


# --- inference -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model_file", ["model_int8.tflite", "model_float32.tflite", "model_qat_int8.tflite",
                                        "model_int8_rgb.tflite"])
def test_on_device_results_equal_the_runtime_on_the_contract_tensor(bundle_zip, published_version,
                                                                    fashion_mnist_test, model_file):
    """For real test images as PNG: the app's pipeline (bundle, own decoder, own quantization) gives the
    same probabilities and the same top class as contract.runtime on decode_image's tensor."""
    images = fashion_mnist_test[0][:IMAGES]
    runner = open_runner(published_version / model_file, "litert")
    bundle = ondevice.Bundle(bundle_zip)
    classifier = ondevice.Classifier(bundle, model_file)
    pngs = [png_bytes(image) for image in images]
    served = runner.predict(np.stack([decode_image(png, 28, 28, 1) for png in pngs]))
    for png, expected in zip(pngs, served, strict=True):
        on_device = classifier.probabilities(classifier.decode(png))
        np.testing.assert_allclose(on_device, expected, rtol=0, atol=1e-6)
        assert classifier.classify(png)["predictions"][0]["index"] == int(np.argmax(expected))
    bundle.close()


@pytest.mark.slow
def test_classify_gives_every_label_once_most_likely_first(bundle_zip, fashion_mnist_test):
    bundle = ondevice.Bundle(bundle_zip)
    classifier = ondevice.Classifier(bundle)
    x, y = fashion_mnist_test
    predictions = classifier.classify(png_bytes(x[0]))["predictions"]
    percents = [p["percent"] for p in predictions]
    assert sorted(p["label"] for p in predictions) == sorted(bundle.labels)
    assert percents == sorted(percents, reverse=True)
    assert sum(percents) == pytest.approx(100, abs=0.06)  # each share rounded to 2 decimals
    # The model is about 85 % accurate: across 200 real images most top classes are the true ones.
    hits = sum(classifier.classify(png_bytes(x[i]))["predictions"][0]["index"] == y[i] for i in range(200))
    assert hits >= 150
    bundle.close()


@pytest.mark.slow
def test_labels_inside_every_tflite_equal_labels_txt(bundle_zip):
    bundle = ondevice.Bundle(bundle_zip)
    labels_txt = bundle.read("labels.txt").decode("utf-8").splitlines()
    assert len(bundle.tflite_files()) >= 4
    for model_file in bundle.tflite_files():
        embedded = ondevice.read_embedded_labels(bundle.read(model_file))
        assert embedded == labels_txt == bundle.manifest["labels"], model_file
        assert ondevice.Classifier(bundle, model_file).labels == embedded
    assert labels_txt[9] == "Ankle boot" and len(labels_txt) == 10
    bundle.close()


@pytest.mark.slow
def test_embedded_labels_are_really_read(bundle_zip, tmp_path):
    """Swap two class names in labels.txt and the manifest (consistently): only the labels inside the
    .tflite still say the truth, and the client refuses the bundle instead of mislabelling."""
    with zipfile.ZipFile(bundle_zip) as archive:
        labels = archive.read("labels.txt").decode().splitlines()
        manifest = json.loads(archive.read("manifest.json"))
    labels[7], labels[9] = labels[9], labels[7]
    manifest["labels"] = labels
    doctored = doctored_bundle(bundle_zip, tmp_path / "swapped.zip", {
        "labels.txt": "".join(f"{label}\n" for label in labels).encode(),
        "manifest.json": json.dumps(manifest).encode(),
    })
    bundle = ondevice.Bundle(doctored)
    with pytest.raises(ondevice.BundleError, match="carries labels"):
        ondevice.Classifier(bundle)
    bundle.close()


@pytest.mark.slow
def test_verify_checks_the_standard_metadata_an_app_reads(bundle_zip, tmp_path):
    """--verify reads the TFLite Model Metadata MediaPipe uses: a file whose labels zip names other classes (its
    pocketcnn labels entry and its outputs unchanged) fails, and says why."""
    from export.tflite_files import read_metadata, with_metadata

    with zipfile.ZipFile(bundle_zip) as archive:
        original = archive.read("model_int8_rgb.tflite")
    found = read_metadata(original)
    wrong = list(reversed(found["labels"]))
    doctored = doctored_bundle(bundle_zip, tmp_path / "metadata.zip", {"model_int8_rgb.tflite": with_metadata(
        original, wrong, found["name"], found["version"], found["description"])})
    with ondevice.Bundle(bundle_zip) as bundle:
        assert all(check.passed for check in ondevice.verify_bundle(bundle, ["model_int8_rgb.tflite"]))
    with ondevice.Bundle(doctored) as bundle:
        check = ondevice.verify_bundle(bundle, ["model_int8_rgb.tflite"])[0]
    assert any("labels file inside the .tflite" in failure for failure in check.failures), check.failures


@pytest.mark.slow
def test_input_quantization_is_cross_checked_with_the_manifest(bundle_zip, tmp_path, capsys):
    with zipfile.ZipFile(bundle_zip) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    manifest["artifacts"]["tflite_int8"]["input"]["quantization"] = {"scale": 0.5, "zero_point": 0}
    doctored = doctored_bundle(bundle_zip, tmp_path / "quantization.zip",
                               {"manifest.json": json.dumps(manifest).encode()})
    photo = tmp_path / "photo.png"
    with zipfile.ZipFile(bundle_zip) as archive:
        photo.write_bytes(archive.read("reference/sample_00.png"))
    assert ondevice.main([str(doctored), str(photo)]) == 2
    error = capsys.readouterr().err
    assert "input tensor's quantization" in error and "0.5" in error


# --- the self-check ------------------------------------------------------------------------------


@pytest.mark.slow
def test_verify_passes_on_the_zip_and_the_extracted_folder(bundle_zip, bundle_folder, capsys):
    assert ondevice.main([str(bundle_zip), "--verify"]) == 0
    table = capsys.readouterr().out
    assert table.count("passed") == len(ondevice.Bundle(bundle_zip).tflite_files()) and "FAILED" not in table
    assert ondevice.main([str(bundle_folder), "--verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    reference = json.loads((bundle_folder / "reference" / "reference.json").read_text())
    assert report["passed"] is True
    assert {m["model_file"] for m in report["models"]} == {p.name for p in bundle_folder.glob("*.tflite")}
    for model in report["models"]:
        assert model["samples"] == len(reference["samples"]) >= 8
        assert model["tolerance"] == reference["tolerance"][model["format"]]
        assert 0 <= model["max_abs_diff"] <= model["tolerance"]


@pytest.mark.slow
def test_verify_fails_when_the_expected_outputs_were_altered(bundle_zip, tmp_path, capsys):
    with zipfile.ZipFile(bundle_zip) as archive:
        reference = json.loads(archive.read("reference/reference.json"))
    for sample in reference["samples"]:
        for key, values in sample["expected"].items():
            sample["expected"][key] = list(np.roll(values, 1))  # every probability moved to the next class
    doctored = doctored_bundle(bundle_zip, tmp_path / "altered.zip",
                               {"reference/reference.json": json.dumps(reference).encode()})
    assert ondevice.main([str(doctored), "--verify", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False and report["models"]
    for model in report["models"]:
        assert not model["passed"], model["model_file"]
        assert any("differ from the reference" in f for f in model["failures"])
        assert any("top class" in f for f in model["failures"])


@pytest.mark.slow
def test_verify_fails_on_flipped_weight_bytes(bundle_zip, tmp_path, capsys):
    with zipfile.ZipFile(bundle_zip) as archive:
        original = archive.read("model_int8.tflite")
        manifest = json.loads(archive.read("manifest.json"))
    start, length = weight_buffer_span(original)
    assert length > 10_000, "the largest buffer should be the dense layer's weights"
    damaged = bytearray(original)
    damaged[start:start + length] = bytes(b ^ 0xFF for b in damaged[start:start + length])
    damaged = bytes(damaged)

    # 1. The file alone was changed: its sha256 no longer matches the manifest.
    doctored = doctored_bundle(bundle_zip, tmp_path / "flipped.zip", {"model_int8.tflite": damaged})
    assert ondevice.main([str(doctored), "--verify", "--model", "model_int8.tflite"]) == 1
    assert "sha256" in capsys.readouterr().out

    # 2. The manifest was "fixed" to match: the outputs on the reference samples still give it away.
    manifest["artifacts"]["tflite_int8"]["sha256"] = hashlib.sha256(damaged).hexdigest()
    doctored = doctored_bundle(bundle_zip, tmp_path / "flipped-and-hidden.zip",
                               {"model_int8.tflite": damaged, "manifest.json": json.dumps(manifest).encode()})
    assert ondevice.main([str(doctored), "--verify", "--model", "model_int8.tflite", "--json"]) == 1
    [model] = json.loads(capsys.readouterr().out)["models"]
    assert not model["passed"] and model["max_abs_diff"] > model["tolerance"]
    assert not any("sha256" in f for f in model["failures"])
    assert any("differ from the reference" in f for f in model["failures"])
    # The untouched files in the same bundle still pass.
    assert ondevice.main([str(doctored), "--verify", "--model", "model_float32.tflite"]) == 0


# --- command line --------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_prints_a_table_and_json(bundle_zip, published_version, fashion_mnist_test, tmp_path, capsys):
    x, _ = fashion_mnist_test
    photo = tmp_path / "coat.png"
    photo.write_bytes(png_bytes(x[20]))
    pixels = decode_image(photo.read_bytes(), 28, 28, 1)[np.newaxis]
    labels = (published_version / "labels.txt").read_text().splitlines()

    expected = open_runner(published_version / "model_int8.tflite", "litert").predict(pixels)[0]
    assert ondevice.main([str(bundle_zip), str(photo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{photo}: fashion_mnist v1 (tflite_int8")
    assert len(lines) == 1 + len(labels)
    assert lines[1].startswith(f"  {labels[int(np.argmax(expected))]} ")

    expected = open_runner(published_version / "model_float16.tflite", "litert").predict(pixels)[0]
    assert ondevice.main([str(bundle_zip), str(photo), "--model", "model_float16.tflite", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model"]["format"] == "tflite_float16"
    assert answer["predictions"][0]["label"] == labels[int(np.argmax(expected))]
    assert sorted(p["label"] for p in answer["predictions"]) == sorted(labels)
    percents = [p["percent"] for p in answer["predictions"]]
    assert percents == sorted(percents, reverse=True)
    assert percents[0] == pytest.approx(100 * expected.max() / expected.sum(), abs=0.006)


@pytest.mark.slow
def test_cli_errors(bundle_zip, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    assert ondevice.main([str(bundle_zip), str(text)]) == 1
    assert "notes.txt: not a photo" in capsys.readouterr().err
    assert ondevice.main([str(bundle_zip), str(text), "--model", "model.onnx"]) == 2
    assert "model_int8.tflite" in capsys.readouterr().err  # says which models there are
    assert ondevice.main([str(tmp_path / "missing.zip"), "--verify"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert ondevice.main([str(text), "--verify"]) == 2
    assert "neither a zip file nor a folder" in capsys.readouterr().err
    assert ondevice.main([str(bundle_zip)]) == 2
    assert "--verify" in capsys.readouterr().err
    assert ondevice.main(["--help"]) == 0
    assert "--verify" in capsys.readouterr().out


@pytest.mark.slow
def test_the_file_runs_alone_without_repository_code(bundle_zip, tmp_path, python):
    """Copied into an app project, with no pocketcnn code beside it: it imports no repository package
    and no TensorFlow, and the self-check passes."""
    shutil.copy(Path(ondevice.__file__), tmp_path / "ondevice.py")
    script = (
        "import sys, ondevice\n"
        f"code = ondevice.main([{str(bundle_zip)!r}, '--verify'])\n"
        "forbidden = {'contract', 'export', 'train', 'serve', 'clients', 'tensorflow', 'keras'}\n"
        "print('IMPORTED', sorted({m.split('.')[0] for m in sys.modules} & forbidden))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([python, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "IMPORTED []" in done.stdout


# --- agreement with the running service ----------------------------------------------------------


@pytest.mark.slow
def test_on_device_top_class_equals_the_services(live_server, bundle_zip, fashion_mnist_test):
    """The same real photos through the HTTP service and through the phone's pipeline: same top class."""
    from clients.predict import predict

    x, _ = fashion_mnist_test
    bundle = ondevice.Bundle(bundle_zip)
    first = predict(png_bytes(x[0]), url=live_server)
    served_format = first["model"]["format"]
    artifact = bundle.manifest["artifacts"].get(served_format, {})
    same_file = artifact.get("file") in bundle.tflite_files()
    # The service may run ONNX (float32, not in the bundle): compare with the float32 .tflite then.
    classifier = ondevice.Classifier(bundle, artifact["file"] if same_file else "model_float32.tflite")
    compared = 0
    for image in x[:60]:
        photo = png_bytes(image)
        served = predict(photo, url=live_server)["predictions"]
        if not same_file and served[0]["percent"] - served[1]["percent"] < 0.05:
            continue  # a float32 near-tie may fall either way between two runtimes
        assert classifier.classify(photo)["predictions"][0]["label"] == served[0]["label"]
        compared += 1
    assert compared >= 55
    bundle.close()
