"""Export: every format round-tripped through the runtime that really loads it, the gates, the
manifest, the mobile bundle, reproducible bytes, atomic publishing and clear errors."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import zipfile

import numpy as np
import pytest
from helpers import SESSION_EXPORT_GATES

from contract import decode_image, read_manifest
from contract.files import sha256_file
from contract.manifest import ModelRepository
from contract.runtime import open_runner

keras = pytest.importorskip("keras")

from contract.formats import FORMATS, parse_formats  # noqa: E402
from export.cli import main as export_main  # noqa: E402
from export.published import find_published  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def manifest(published_version):
    return read_manifest(published_version)


@pytest.fixture(scope="module")
def keras_reference(trained_run, manifest):
    """The source model's training=False probabilities on the held-out test images, at the temperature the
    manifest records (computed here from the Keras model, not with export's own helpers)."""
    model = keras.models.load_model(trained_run / "best.keras", safe_mode=True)
    test = np.load(trained_run / "arrays" / "test.npz")
    probs = calibrated_probabilities(model, test["x"], manifest["calibration"]["temperature"])
    return test["x"], test["y"], probs


def calibrated_probabilities(model, x: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T): the last Dense layer's logits from what it reads, divided by T."""
    last = model.layers[-1]
    features = np.asarray(keras.Model(model.inputs, last.input)(x.astype("float32"), training=False), np.float64)
    kernel, bias = (np.asarray(w, np.float64) for w in last.get_weights())
    logits = (features @ kernel + bias) / temperature
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def test_every_format_is_published_with_a_complete_manifest(published_version, manifest):
    assert set(manifest["artifacts"]) == set(FORMATS)
    assert manifest["name"] == "fashion_mnist" and manifest["version"] == 1
    assert manifest["labels"][9] == "Ankle boot"
    assert manifest["input"]["shape"] == [None, 28, 28, 1] and manifest["input"]["layout"] == "NHWC"
    for key, artifact in manifest["artifacts"].items():
        path = published_version / artifact["file"]
        assert path.exists(), key
        if path.is_file():
            assert artifact["sha256"] == sha256_file(path) and artifact["bytes"] == path.stat().st_size, key
        assert artifact["status"] == "passed" and artifact["checks"]["no_random_ops"], key
        assert artifact["checks"]["deterministic"] is True, key
        for field in ("accuracy", "agreement", "max_abs_diff", "latency_ms"):
            assert isinstance(artifact[field], float), (key, field)
    int8 = manifest["artifacts"]["tflite_int8"]
    assert int8["input"]["dtype"] == "uint8" and int8["output"]["dtype"] == "uint8"
    assert int8["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}  # raw pixels in
    assert int8["output"]["quantization"]["scale"] == pytest.approx(1 / 256)
    assert (published_version / "benchmark.txt").read_text().count("passed") == len(FORMATS)
    # A service running as another user (a container with the repository mounted) must read every file.
    unreadable = [str(p) for p in published_version.rglob("*") if not p.stat().st_mode & 0o004]
    assert unreadable == []


@pytest.mark.parametrize("key", [k for k in FORMATS if FORMATS[k].runtime != "tensorflow"])
def test_file_round_trips_through_its_runtime(published_version, manifest, keras_reference, key):
    """Independently of export's own checks: load the file with LiteRT / ONNX Runtime and compare."""
    x, y, source = keras_reference
    artifact = manifest["artifacts"][key]
    runner = open_runner(published_version / artifact["file"], artifact["runtime"])
    probs = runner.predict(x)
    agreement = (probs.argmax(1) == source.argmax(1)).mean()
    assert (probs.argmax(1) == y).mean() == pytest.approx(artifact["accuracy"], abs=1e-9)
    if FORMATS[key].family == "float32":
        assert np.abs(probs - source).max() <= 1e-4 and agreement >= 0.999
    elif FORMATS[key].family == "float16":
        assert np.abs(probs - source).max() <= 1e-2 and agreement >= 0.999
    elif artifact["checks"]["reference_expected"] == "keras":
        assert agreement >= 0.99 and artifact["accuracy_drop_points"] <= 1.0
    else:
        # QAT / pruned files come from a fine-tuned model: compare with that model's recorded outputs.
        reference = json.loads((published_version / "reference" / "reference.json").read_text())
        source_key = artifact["checks"]["reference_expected"]
        for sample in reference["samples"]:
            pixels = decode_image((published_version / "reference" / sample["file"]).read_bytes(), 28, 28, 1)
            out = runner.predict(pixels[None])[0]
            expected = np.asarray(sample["expected"][source_key])
            assert np.abs(out - expected).max() <= artifact["checks"]["reference_tolerance"]
            assert out.argmax() == expected.argmax()
        assert artifact["accuracy_drop_points"] <= 1.0


def test_savedmodel_serving_signature_has_stable_names(published_version, keras_reference):
    import tensorflow as tf

    x, _, source = keras_reference
    loaded = tf.saved_model.load(str(published_version / "saved_model"))
    signature = loaded.signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["image"]
    assert list(signature.structured_outputs) == ["probabilities"]
    assert set(loaded.signatures) == {"serving_default", "features"}, "features: the service's detector only"
    out = signature(image=tf.constant(x[:64].astype("float32")))["probabilities"].numpy()
    assert np.abs(out - source[:64]).max() <= 1e-5


def test_onnx_has_a_named_dynamic_batch_and_opset_17(published_version, keras_reference):
    import onnx

    model = onnx.load(str(published_version / "model.onnx"))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    first = model.graph.input[0]
    assert first.name == "image" and first.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].name == "probabilities"
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"Dropout", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                      "Multinomial", "Bernoulli"}
    runner = open_runner(published_version / "model.onnx", "onnxruntime")
    x = keras_reference[0]
    assert runner.predict(x[:7]).shape == (7, 10) and runner.predict(x[:1]).shape == (1, 10)


def _tflite_metadata(flatbuffer: bytes) -> dict[str, bytes]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    found = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        found[entry.Name().decode()] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return found


@pytest.mark.parametrize("key", [k for k in FORMATS if FORMATS[k].is_tflite])
def test_tflite_files_carry_their_labels_and_no_random_ops(published_version, key):
    from export.verify import tflite_ops

    data = (published_version / FORMATS[key].file).read_bytes()
    labels = _tflite_metadata(data)["labels"].decode()
    assert labels == (published_version / "labels.txt").read_text()
    ops = tflite_ops(data)
    assert "CONV_2D" in ops and not [op for op in ops if "RANDOM" in op or "MULTINOMIAL" in op]


def test_reference_samples_reproduce_the_keras_outputs(published_version, manifest, trained_run):
    """Reference outputs: the calibrated Keras model on the sample decoded through the recorded input recipe."""
    reference = json.loads((published_version / manifest["reference"]["file"]).read_text())
    model = keras.models.load_model(trained_run / "best.keras", safe_mode=True)
    assert len(reference["samples"]) == manifest["reference"]["count"] >= 8
    for sample in reference["samples"]:
        pixels = decode_image((published_version / "reference" / sample["file"]).read_bytes(), 28, 28, 1,
                              recipe=manifest["input"]["recipe"])
        expected = calibrated_probabilities(model, pixels[None], manifest["calibration"]["temperature"])[0]
        assert np.abs(expected - np.asarray(sample["expected"]["keras"])).max() < 1e-5
        assert int(np.argmax(expected)) == sample["label_index"]
    assert reference["tolerance"]["tflite_float32"] == 1e-4
    assert set(reference["compare_with"]) == set(FORMATS)


def test_mobile_bundle_holds_what_an_app_needs(published_version):
    with zipfile.ZipFile(published_version / "mobile_bundle.zip") as bundle:
        names = set(bundle.namelist())
        assert {"model_int8.tflite", "model_float32.tflite", "labels.txt", "manifest.json",
                "reference/reference.json"} <= names
        assert any(n.startswith("reference/sample_") and n.endswith(".png") for n in names)
        assert bundle.read("model_int8.tflite") == (published_version / "model_int8.tflite").read_bytes()
        assert json.loads(bundle.read("manifest.json"))["version"] == 1


def test_qat_and_pruning_paths(manifest):
    qat, pruned, ptq = (manifest["artifacts"][k] for k in ("tflite_qat_int8", "tflite_pruned_int8", "tflite_int8"))
    assert qat["compared_with"] == "qat fine-tuned model" and qat["fine_tune"]["mode"] == "qat"
    assert qat["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}, "QAT file still takes raw pixels"
    assert pruned["fine_tune"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert pruned["gzip_bytes"] < 0.8 * ptq["gzip_bytes"], "half the weights are zero: it compresses better"


def test_published_lookup_finds_the_version(trained_run, model_repository, published_version, tmp_path):
    assert find_published(trained_run, model_repository) == published_version
    assert find_published(trained_run, tmp_path) is None


# --- reproducibility, gates and atomic publishing -------------------------------------------------

REPRO_FORMATS = "tflite_float32,tflite_float16,tflite_dynamic,tflite_int8,onnx"


def test_exporting_twice_gives_byte_identical_tflite_and_onnx(trained_run, published_version, manifest, tmp_path,
                                                               python):
    """The session's export (in the test process) and another in a separate process, as two release pipeline
    runs would be: the same files, byte for byte, QAT's fine-tune included."""
    command = [python, "-m", "export", str(trained_run), "--models-dir", str(tmp_path), "--formats",
               REPRO_FORMATS, "--qat", "--quiet", *SESSION_EXPORT_GATES]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    again = read_manifest(tmp_path / "fashion_mnist" / "1")
    for key in [*REPRO_FORMATS.split(","), "tflite_qat_int8"]:
        assert manifest["artifacts"][key]["sha256"] == again["artifacts"][key]["sha256"], key
        assert (published_version / FORMATS[key].file).read_bytes() == (tmp_path / "fashion_mnist/1" /
                                                                        FORMATS[key].file).read_bytes(), key


def test_onnx_bytes_do_not_depend_on_the_order_tf2onnx_emits_constants_in(published_version):
    """tf2onnx lists small shared constants in an order that varies between processes (CI saw two hashes
    for one model). The canonical form must not care: shuffle and rename the initializers of the real
    exported file, canonicalize again, and the bytes must be the published ones."""
    import onnx

    from export.convert import canonicalize_onnx

    published = (published_version / "model.onnx").read_bytes()
    model = onnx.load_from_string(published)
    assert len(model.graph.initializer) > 3
    originals = list(model.graph.initializer)
    shuffled = [originals[i] for i in np.random.default_rng(0).permutation(len(originals))]
    renames = {t.name: f"tf2onnx_{i}" for i, t in enumerate(shuffled)}
    del model.graph.initializer[:]
    for tensor in shuffled:
        copy = onnx.TensorProto.FromString(tensor.SerializeToString())
        copy.name = renames[tensor.name]
        model.graph.initializer.append(copy)
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            node.input[position] = renames.get(name, name)
    assert model.SerializeToString(deterministic=True) != published
    canonicalize_onnx(model)
    assert model.SerializeToString(deterministic=True) == published


def test_a_failed_gate_publishes_nothing_and_says_why(trained_run, tmp_path, capsys):
    report = tmp_path / "report.json"
    code = export_main([str(trained_run), "--models-dir", str(tmp_path / "models"), "--formats",
                        "tflite_float32,onnx", "--float32-max-diff", "0", "--report", str(report)])
    assert code == 3, "a failed gate has its own exit code"
    err = capsys.readouterr().err
    assert "EXPORT FAILED" in err and "nothing was published" in err
    assert "tflite_float32: max |probability difference|" in err and "> 0" in err
    assert ModelRepository(tmp_path / "models").versions("fashion_mnist") == []
    assert list((tmp_path / "models" / "fashion_mnist").iterdir()) == [], "no staging folder left behind"
    results = json.loads(report.read_text())
    assert results["published"] is None and results["artifacts"]["onnx"]["status"] in ("passed", "failed")


def test_a_file_that_cannot_get_standard_metadata_fails_its_gate(trained_run, tmp_path, capsys, monkeypatch):
    """An int8 input quantized other than (1.0, 0) would be fed raw pixels by MediaPipe and compute something else:
    the metadata writer refuses it, export exits 3 and publishes nothing."""
    from ai_edge_litert import schema_py_generated as schema

    from export import tflite_files

    real = tflite_files.with_metadata

    def with_other_input_scale(flatbuffer, *args, **kwargs):
        model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
        graph = model.subgraphs[0]
        graph.tensors[graph.inputs[0]].quantization.scale = np.array([0.5], np.float32)
        return real(tflite_files._pack(model), *args, **kwargs)

    monkeypatch.setattr(tflite_files, "with_metadata", with_other_input_scale)
    code = export_main([str(trained_run), "--models-dir", str(tmp_path / "models"), "--formats", "tflite_int8",
                        *SESSION_EXPORT_GATES])
    assert code == 3
    err = capsys.readouterr().err
    assert "tflite_int8: TFLite metadata: the uint8 input is quantized (0.5, 0), not exactly (1.0, 0)" in err
    assert ModelRepository(tmp_path / "models").versions("fashion_mnist") == []


def test_a_killed_export_leaves_no_visible_version(trained_run, tmp_path, python):
    models = tmp_path / "models"
    process = subprocess.Popen([python, "-m", "export", str(trained_run), "--models-dir", str(models), "--quiet",
                                *SESSION_EXPORT_GATES],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = None
    deadline = time.monotonic() + 300
    while staging is None or not any(staging.iterdir()):
        assert process.poll() is None, "export ended before it could be killed"
        assert time.monotonic() < deadline
        found = list((models / "fashion_mnist").glob(".staging-*")) if (models / "fashion_mnist").is_dir() else []
        staging = found[0] if found else None
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    repository = ModelRepository(models)
    assert repository.versions("fashion_mnist") == [], "a reader sees no version"
    assert staging.exists(), "the half-written folder is hidden, not published"
    # The next export clears what the killed one left and publishes version 1.
    assert export_main([str(trained_run), "--models-dir", str(models), "--formats", "tflite_float32", "--quiet",
                        *SESSION_EXPORT_GATES]) == 0
    assert [v.version for v in repository.versions("fashion_mnist")] == [1]
    assert not staging.exists()


def test_a_crash_is_exit_1_not_a_failed_gate(trained_run, tmp_path, python):
    """An unexpected error (here: the source model's inference raising) is Python's exit 1 with its traceback,
    never the gate code 3 a release pipeline would read as "the model is not good enough"."""
    crash = ("import sys, export.pipeline as p\n"
             "def boom(*a, **k): raise RuntimeError('simulated bug')\n"
             "p.keras_probabilities = boom\n"
             "from export.cli import main\n"
             f"sys.exit(main([{str(trained_run)!r}, '--models-dir', {str(tmp_path)!r}, '--formats', 'onnx']))\n")
    result = subprocess.run([python, "-c", crash], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "RuntimeError: simulated bug" in result.stderr
    assert ModelRepository(tmp_path).versions("fashion_mnist") == []
    assert [p.name for p in (tmp_path / "fashion_mnist").iterdir()] == [], "no staging folder left behind"


@pytest.mark.parametrize("argv,message", [
    (["{missing}"], "No run folder at"),
    (["{run}", "--formats", "tflite_int9"], "unknown format 'tflite_int9'; valid formats: savedmodel, tflite_float32"),
    (["{run}", "--models-dir", "{file}"], "Cannot write to the model repository"),
    (["{run}", "--name", "../escape"], "not a valid model name"),
])
def test_bad_arguments_are_clear_errors(trained_run, tmp_path, capsys, argv, message):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    values = {"missing": str(tmp_path / "no-run"), "run": str(trained_run), "file": str(blocker)}
    assert export_main([a.format(**values) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_unwritable_destination_leaves_earlier_versions_intact(trained_run, model_repository, published_version,
                                                               tmp_path, capsys):
    before = {p.name: sha256_file(p) for p in published_version.iterdir() if p.is_file()}
    # /proc refuses new directories even to root: a destination nobody can write.
    assert export_main([str(trained_run), "--models-dir", "/proc/pocketcnn-models", "--quiet"]) == 2
    assert "Cannot write to the model repository" in capsys.readouterr().err
    assert before == {p.name: sha256_file(p) for p in published_version.iterdir() if p.is_file()}


def test_a_model_with_a_lambda_layer_is_refused(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "lambda-run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("plots"))
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10, activation="softmax")(
        keras.layers.Flatten()(keras.layers.Lambda(lambda t: t / 255)(inputs)))
    keras.Model(inputs, outputs).save(run / "best.keras")
    assert export_main([str(run), "--models-dir", str(tmp_path / "models")]) == 2
    assert "Lambda layer" in capsys.readouterr().err


def test_format_table_parsing():
    assert [f.key for f in parse_formats("")] == [k for k in FORMATS if not FORMATS[k].opt_in]
    assert [f.key for f in parse_formats("all")] == list(FORMATS)
    assert [f.key for f in parse_formats("onnx,tflite_int8", qat=True)] == ["tflite_int8", "tflite_qat_int8", "onnx"]
