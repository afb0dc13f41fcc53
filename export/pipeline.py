"""Export a run's best.keras into a new model version: convert, prove, then publish (or publish nothing)."""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import decode_image, ood
from contract import run_folder as rf
from contract.files import atomic_write_json, sha256_file, storage_error, tree_sha256, tree_size
from contract.formats import FORMATS, MEDIAPIPE_CHANNELS, Format, reference_key, source_name
from contract.image import png_bytes
from contract.manifest import SCHEMA, ModelRepository, is_valid_model_name
from contract.ood import Detector
from contract.recipes import BORDER_CLUTTER_LIMIT, NOTHING_FOUND, InputRecipe, recipe_for
from export import calibration, convert, publish, tflite_files, verify
from export.options import ExportOptions
from export.tfmot_process import FineTuned, FineTuneInputs, fine_tune

log = logging.getLogger("export")

CALIBRATION_PLOT = "reliability_diagram.png"
REFERENCE_DIR = "reference"
REFERENCE_FILE = "reference/reference.json"
BUNDLE_FILE = "mobile_bundle.zip"
TABLE_FILE = "benchmark.txt"
LABELS_FILE = "labels.txt"
MAX_REFERENCES = 10


class ExportInputError(ValueError):
    """The run, the model or the arguments cannot be exported (exit code 2)."""


@dataclass(frozen=True)
class ModelCard:
    """What the manifest says about the model itself, beside its files."""

    name: str
    labels: list[str]
    input_shape: tuple[int, int, int]
    recipe: InputRecipe             # how a photo becomes the input (train's --input-recipe)
    source: dict                    # the run and the model file it came from, and their accuracy
    calibration: dict | None = None  # the temperature and the calibration error (see calibrate)
    ood: dict | None = None          # the out-of-distribution detector (see export/ood.py)


@dataclass(frozen=True)
class ComparedModel:
    """A model exported files are compared with: best.keras, or a fine-tuned copy of it (QAT, pruning)."""

    source: str                  # the Format.source it stands for: keras | qat | prune
    test_probs: np.ndarray       # its probabilities on the held-out test images
    reference_probs: np.ndarray  # and on the reference images
    fine_tune: dict | None = None  # the fine-tune's report
    flatbuffer: bytes | None = None  # a fine-tuned model's .tflite, as the tfmot worker converted it
    detector: Detector | None = None  # the out-of-distribution statistics of its features
    test_flags: np.ndarray | None = None  # its own out-of-distribution flags on the test images
    ood: dict | None = None      # its feature distances' scale and flag rates

    @property
    def detector_file(self) -> str:
        return ood.DETECTOR_FILE if self.source == "keras" else ood.DETECTOR_FILE.replace(".npz", f"_{self.source}.npz")

    def expected(self) -> verify.Expected:
        return verify.Expected(source_name(self.source), self.test_probs, self.detector, self.test_flags)


def compared_model(source: str, test_probs, reference_probs, features: dict, train_y, fine_tune=None,
                   flatbuffer=None) -> ComparedModel:
    """A source model with its out-of-distribution detector, fitted on its features of the training sample, and
    its scale on the validation images. features: {"train", "validation", "test"} arrays."""
    detector = Detector.fit(features["train"], train_y)
    validation, test = detector.distance(features["validation"]), detector.distance(features["test"])
    scale = ood.Scale.fit(validation)
    test_flags = ood.scores(test, scale) > 1
    summary = {**scale.as_dict(), "validation_flag_rate": float((ood.scores(validation, scale) > 1).mean()),
               "test_flag_rate": float(test_flags.mean())}
    return ComparedModel(source, test_probs, reference_probs, fine_tune, flatbuffer, detector, test_flags, summary)


@dataclass
class ExportResult:
    published: Path | None
    verdicts: list[verify.Verdict]
    table: str
    name: str
    source_accuracy: float

    @property
    def passed(self) -> bool:
        return self.published is not None


def load_model_safely(path: Path):
    import keras

    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except ValueError as err:
        if "safe_mode" in str(err) or "Lambda" in str(err):
            raise ExportInputError(
                f"{path} contains code (a Lambda layer or a custom function) and was refused: pocketcnn loads "
                "models with Keras safe_mode on. Rebuild the model without Lambda layers."
            ) from None
        raise ExportInputError(f"{path} cannot be loaded as a Keras model: {err}") from None
    except (OSError, KeyError) as err:
        raise ExportInputError(f"{path} cannot be loaded as a Keras model: {err}") from None


def keras_probabilities(model, images: np.ndarray, batch: int = 512) -> np.ndarray:
    return np.concatenate([np.asarray(model(images[i:i + batch].astype(np.float32), training=False))
                           for i in range(0, len(images), batch)])


def classifier_layer(model):
    """The model's last layer, which must be a Dense with softmax: temperature scaling divides its logits."""
    import keras

    last = model.layers[-1]
    if not isinstance(last, keras.layers.Dense) or getattr(last.activation, "__name__", "") != "softmax":
        raise ExportInputError(f"the model's last layer ({last.name}, {type(last).__name__}) is not a Dense layer "
                               "with softmax; pocketcnn calibrates its percentages by dividing that layer's logits")
    return last


def keras_features(model, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """What the last (Dense, softmax) layer reads, in inference mode: the out-of-distribution detector's input."""
    import keras

    features = keras.Model(model.inputs, classifier_layer(model).input)
    return np.concatenate([np.asarray(features(images[i:i + batch].astype(np.float32), training=False))
                           .reshape(min(batch, len(images) - i), -1) for i in range(0, len(images), batch)])


def keras_logits(model, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """The logits (the last Dense layer before its softmax), in inference mode."""
    import keras

    last = classifier_layer(model)
    features = keras.Model(model.inputs, last.input)
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in last.get_weights())
    return np.concatenate([np.asarray(features(images[i:i + batch].astype(np.float32), training=False)) @ kernel + bias
                           for i in range(0, len(images), batch)])


def with_temperature(model, temperature: float):
    """A copy of `model` computing softmax(logits / temperature): the last layer's kernel and bias divided."""
    import keras

    calibrated = keras.models.clone_model(model)
    calibrated.set_weights(model.get_weights())
    last = classifier_layer(calibrated)
    last.set_weights([np.asarray(w) / np.float32(temperature) for w in last.get_weights()])
    return calibrated


def calibrate(model, options: ExportOptions, validation: tuple, test: tuple, staging: Path):
    """Temperature scaling fitted on the validation images (or fixed by --temperature), baked into a copy of the
    model; the calibration error before and after on the test images, and the reliability diagram."""
    (val_x, val_y), (test_x, test_y) = validation, test
    logits_val, logits_test = keras_logits(model, val_x), keras_logits(model, test_x)
    fitted = calibration.fit_temperature(logits_val, val_y)
    temperature = options.temperature or fitted
    calibrated = with_temperature(model, temperature)
    before, after = calibration.softmax(logits_test), keras_probabilities(calibrated, test_x)
    diagram = calibration.reliability_diagram(
        {"before (T = 1)": (before, test_y), f"after (T = {temperature:.3f})": (after, test_y)},
        staging / CALIBRATION_PLOT, f"Reliability on the held-out test images ({len(test_y):,})")
    summary = {
        "method": "temperature scaling (Guo et al. 2017): softmax(logits / T), T baked into the last Dense layer",
        "temperature": round(float(temperature), 6),
        "fitted_temperature": round(float(fitted), 6),
        "fitted_on": f"{rf.VALIDATION_ARRAYS} ({len(val_y):,} validation images)",
        "ece": {"before": calibration.expected_calibration_error(before, test_y),
                "after": calibration.expected_calibration_error(after, test_y),
                "measured_on": f"{rf.TEST_ARRAYS} ({len(test_y):,} held-out test images)",
                "bins": calibration.ECE_BINS, "confidence": "top-1"},
        "max_ece": options.max_ece,
        "diagram": diagram.name,
    }
    log.info("Calibration: T = %.3f (fitted %.3f); ECE on the test images %.2f %% -> %.2f %%", temperature, fitted,
             summary["ece"]["before"] * 100, summary["ece"]["after"] * 100)
    return calibrated, after, summary


def model_identity(name: str, run: Path, labels: list[str], input_shape: tuple, recipe: InputRecipe,
                   calibration_summary: dict | None) -> convert.ModelIdentity:
    """Name, version and description for the standard TFLite metadata: what an app developer needs to know,
    above all the input recipe a photo needs before the model (MediaPipe itself only crops and stretches)."""
    height, width, channels = input_shape
    temperature = (calibration_summary or {}).get("temperature")
    recipe_words = {
        "crop": "centre-crop to the model's aspect ratio, then resize",
        "pad": "fit the whole photo and pad with the background colour",
        "product_photo": "Fashion-MNIST's own: trim the plain background, fit the longest side, sharpen, centre on "
                         "black, light-on-dark, grey"}[recipe.name]
    description = (
        f"{name}: {len(labels)} classes ({', '.join(labels[:4])}{', ...' if len(labels) > 4 else ''}), trained with "
        f"pocketcnn. Takes {height}x{width} raw 0-255 pixels (the scaling is inside the model); gives calibrated "
        f"probabilities{f' (temperature {temperature:.3f} inside)' if temperature else ''}. Input recipe "
        f"{recipe.name} v{recipe.version} ({recipe_words}): apply it to a photo before calling the model; "
        "pocketcnn's manifest.json (input.recipe) and clients/ondevice.py define it.")
    version = f"{run.name}+{sha256_file(run / rf.BEST_MODEL)[:12]}"
    return convert.ModelIdentity(name, version, description)


def choose_references(probs: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Indices of up to MAX_REFERENCES test images, one per class: the first one the model gets right
    with at least 90 % (else its most confident correct one). Confident examples keep int8 rounding
    from flipping the top class, so the service's check measures the model, not a coin toss."""
    chosen = []
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    for label in range(classes):
        correct = np.flatnonzero((labels == label) & (predicted == label))
        if len(correct) == 0:
            continue
        sure = correct[confidence[correct] >= 0.9]
        chosen.append(int(sure[0]) if len(sure) else int(correct[np.argmax(confidence[correct])]))
        if len(chosen) == MAX_REFERENCES:
            break
    if not chosen:
        chosen = [int(np.argmax(confidence))]
    return np.asarray(chosen)


def export_run(options: ExportOptions) -> ExportResult:
    try:
        run = rf.resolve_run(options.run)
    except rf.RunFolderError as err:
        raise ExportInputError(str(err)) from None
    for required in (rf.BEST_MODEL, rf.LABELS, rf.TEST_ARRAYS, rf.TRAIN_SAMPLE_ARRAYS, rf.CONFIG):
        if not (run / required).is_file():
            raise ExportInputError(f"{run} is missing {required}; it is not a complete run folder.")
    if not (run / rf.VALIDATION_ARRAYS).is_file():
        raise ExportInputError(
            f"{run} has no {rf.VALIDATION_ARRAYS}: export fits the temperature that calibrates the percentages "
            "(and the out-of-distribution threshold) on the validation images, and runs trained before pocketcnn "
            f"kept them lack it. Write it from the run's own seeded split with: python -m train --write-arrays {run}")
    config = rf.read_json(run / rf.CONFIG)
    name = options.name or str(config.get("dataset", "model"))
    if not is_valid_model_name(name):
        raise ExportInputError(f"'{name}' is not a valid model name (letters, digits, '_', '.', '-').")
    formats = options.selected_formats()
    recipe = InputRecipe.parse(recipe_for(str(config.get("dataset", "")), config.get("input_recipe")))
    labels = rf.read_labels(run / rf.LABELS)
    test = np.load(run / rf.TEST_ARRAYS)
    sample = np.load(run / rf.TRAIN_SAMPLE_ARRAYS)
    validation = np.load(run / rf.VALIDATION_ARRAYS)
    test_x, test_y = test["x"], test["y"]
    if options.test_limit:
        test_x, test_y = test_x[:options.test_limit], test_y[:options.test_limit]

    repository = ModelRepository(options.models_dir)
    staging = publish.open_staging(repository, name)  # fails early if the destination is not writable
    scratch = Path(tempfile.mkdtemp(prefix="pocketcnn-export-"))
    try:
        trained = load_model_safely(run / rf.BEST_MODEL)
        input_shape = tuple(int(v) for v in trained.input_shape[1:])
        # Every file is made from, and checked against, the calibrated model.
        model, source_probs, calibration_summary = calibrate(
            trained, options, (validation["x"], validation["y"]), (test_x, test_y), staging)
        source_accuracy = float((source_probs.argmax(axis=1) == test_y).mean())
        references = choose_references(source_probs, test_y, len(labels))
        # The reference images as the service will see them: stored as PNG, decoded through the recipe.
        reference_x = np.stack([decode_image(png_bytes(image), *input_shape, recipe=recipe)
                                for image in test_x[references]])
        log.info("Source: %s, held-out accuracy %.2f %% on %d images", run / rf.BEST_MODEL,
                 source_accuracy * 100, len(test_x))

        calibration = sample["x"][:options.calibration_images]
        if input_shape[-1] != 1:
            skipped = [f.key for f in formats if not f.applies_to(input_shape[-1])]
            if skipped:
                log.info("Not exported: %s (the model already takes RGB; its .tflite files are the MediaPipe ones)",
                         ", ".join(skipped))
            formats = [f for f in formats if f.applies_to(input_shape[-1])]
        identity = model_identity(name, run, labels, input_shape, recipe, calibration_summary)
        ctx = convert.ExportContext(model, staging, labels, input_shape, calibration=calibration,
                                    opset=options.opset, work_dir=scratch, identity=identity)
        fine_tune_inputs = FineTuneInputs(
            train_x=sample["x"], train_y=sample["y"], calibration=calibration, val_x=validation["x"],
            val_y=validation["y"], test_x=test_x, reference_x=reference_x,
            epochs={"qat": options.qat_epochs, "prune": options.prune_epochs},
            learning_rates={"qat": options.qat_learning_rate, "prune": options.prune_learning_rate},
            sparsity=options.prune_sparsity, seed=int(config.get("seed", 1337)))
        features = {"train": keras_features(model, sample["x"]), "validation": keras_features(model, validation["x"]),
                    "test": keras_features(model, test_x)}
        compared = {"keras": compared_model("keras", source_probs, keras_probabilities(model, reference_x),
                                            features, sample["y"])}
        log.info("Out-of-distribution detector: %.1f %% of the validation and %.1f %% of the test images flagged",
                 compared["keras"].ood["validation_flag_rate"] * 100, compared["keras"].ood["test_flag_rate"] * 100)
        held = verify.HeldOut(test_x, test_y, validation["x"], reference_x, source_accuracy)
        verdicts = []
        for step, fmt in enumerate(formats, start=1):
            log.info("[%d/%d] %s", step, len(formats), fmt.key)
            verdicts.append(convert_and_verify(fmt, ctx, options, compared, fine_tune_inputs, held))
        table = format_table(verdicts, staging, source_accuracy)
        passed = all(v.status == "passed" for v in verdicts)
        if not passed:
            publish.discard(staging)
            return ExportResult(None, verdicts, table, name, source_accuracy)

        source = {
            "run": run.name,
            "model_file": rf.BEST_MODEL,
            "model_sha256": sha256_file(run / rf.BEST_MODEL),
            "accuracy": source_accuracy,
            "test_images": int(len(test_x)),
            "training": {k: config.get(k) for k in ("dataset", "recipe", "epochs", "seed", "filters", "convs_per_block",
                                                    "optimizer", "lr_schedule")},
        }
        card = ModelCard(name, labels, input_shape, recipe, source, calibration_summary,
                         ood_summary(recipe, compared))
        published = publish_version(repository, staging, card, verdicts, compared, options, reference_x,
                                    test_y[references], table)
        return ExportResult(published, verdicts, table, name, source_accuracy)
    except BaseException as err:
        publish.discard(staging)
        reason = storage_error(err)
        if reason:  # the destination filled up (or became read-only) while writing the version
            raise publish.DestinationError(
                f"Cannot write to the model repository {repository.model_dir(name)}: {reason}. Nothing was published "
                "and earlier versions are untouched; free some space or choose another --models-dir.") from None
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def publish_version(repository: ModelRepository, staging: Path, card: ModelCard, verdicts: list[verify.Verdict],
                    compared: dict[str, ComparedModel], options: ExportOptions, reference_x: np.ndarray,
                    reference_y: np.ndarray, table: str) -> Path:
    """Complete the staged version whose files all passed (labels, reference samples, table, manifest, mobile
    bundle) and rename it into place as the next version of `card.name`."""
    name, labels = card.name, card.labels
    (staging / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    for model in compared.values():
        model.detector.save(staging / model.detector_file)
    reference_doc = write_references(staging, reference_x, reference_y, labels, verdicts, compared, options)
    (staging / TABLE_FILE).write_text(table + "\n", encoding="utf-8")

    def write_manifest(version: int) -> None:
        manifest = build_manifest(card, version, verdicts, staging, options, reference_doc, compared)
        atomic_write_json(staging / "manifest.json", manifest)
        bundle_members = {LABELS_FILE: staging / LABELS_FILE, "manifest.json": staging / "manifest.json"}
        bundle_members.update({f"{REFERENCE_DIR}/{p.name}": p for p in (staging / REFERENCE_DIR).iterdir()})
        bundle_members.update({FORMATS[v.key].file: staging / FORMATS[v.key].file
                               for v in verdicts if FORMATS[v.key].is_tflite})
        bundle_members.update({m.detector_file: staging / m.detector_file for m in compared.values()})
        publish.write_zip(staging / BUNDLE_FILE, bundle_members)

    return publish.publish(staging, repository, name, write_manifest)


def convert_file(fmt: Format, ctx: convert.ExportContext, compared: dict[str, ComparedModel],
                 inputs: FineTuneInputs) -> Path:
    """Write the file of `fmt`. A format of a fine-tuned model fine-tunes it first (once per kind), and the
    fine-tuned model joins `compared`: its files are measured against it."""
    if fmt.source == "keras":
        return convert.EXPORTERS[fmt.key](ctx)
    if fmt.source not in compared:
        work = ctx.work_dir / f"tfmot_{fmt.source}"
        tuned: FineTuned = fine_tune(fmt.source, ctx.model, ctx.input_shape, inputs, work)
        compared[fmt.source] = compared_model(fmt.source, tuned.test_probs, tuned.reference_probs, tuned.features,
                                              inputs.train_y, tuned.report, tuned.flatbuffer)
    return convert.export_fine_tuned(ctx, fmt, compared[fmt.source].flatbuffer)


def convert_and_verify(fmt: Format, ctx: convert.ExportContext, options: ExportOptions,
                       compared: dict[str, ComparedModel], inputs: FineTuneInputs,
                       held: verify.HeldOut) -> verify.Verdict:
    try:
        path = convert_file(fmt, ctx, compared, inputs)
    except tflite_files.MetadataError as err:
        log.error("%s: the standard TFLite metadata cannot be written: %s", fmt.key, err)
        verdict = verify.Verdict(fmt.key, status="failed")
        verdict.failures.append(f"TFLite metadata: {err}")
        return verdict
    except Exception as err:  # noqa: BLE001 - a converter crash is a failed gate, reported with the rest
        if storage_error(err):
            raise  # not the model's fault: a full or read-only disk is reported as such by export_run
        log.error("%s: conversion failed: %s", fmt.key, err)
        verdict = verify.Verdict(fmt.key, status="error")
        message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        verdict.failures.append(f"conversion failed: {message}")
        return verdict
    # A file from a fine-tuned model is measured against that model (and its detector), while the accuracy gate
    # still compares with the original best.keras.
    try:
        return verify.verify(fmt, path, options.gates_for(fmt.family), held, compared[fmt.source].expected())
    except Exception as err:  # noqa: BLE001 - a file its runtime cannot run fails its gate
        log.error("%s: verification failed: %s", fmt.key, err)
        verdict = verify.Verdict(fmt.key, status="error")
        verdict.failures.append(f"{fmt.runtime} could not run the file: {err}")
        return verdict


def ood_summary(recipe: InputRecipe, compared: dict[str, ComparedModel]) -> dict:
    """The manifest's out-of-distribution section."""
    keras_model = compared["keras"]
    return {
        "method": "relative Mahalanobis distance of the features the last layer reads (Ren et al. 2021), to the "
                  "training sample's class means under a shared covariance, minus to their overall mean; scaled "
                  "so the validation images' median is 0 and their 95th percentile 1"
                  + ("; or, if larger, the photo's doubt from the recipe: the share of its border that is not "
                     f"background over {BORDER_CLUTTER_LIMIT} (a scene, not a product photo), or {NOTHING_FOUND} "
                     "when nothing stands out from the background" if recipe.name == "product_photo" else ""),
        "threshold": 1.0,
        "quantile": ood.QUANTILE,
        "border_clutter_limit": BORDER_CLUTTER_LIMIT if recipe.name == "product_photo" else None,
        "detectors": {source: model.detector_file for source, model in compared.items()},
        "fitted_on": f"{rf.TRAIN_SAMPLE_ARRAYS} (statistics), {rf.VALIDATION_ARRAYS} (scale)",
        "validation_flag_rate": keras_model.ood["validation_flag_rate"],
        "test_flag_rate": keras_model.ood["test_flag_rate"],
    }


def reference_tolerance(verdict: verify.Verdict, fmt: Format, options: ExportOptions) -> float:
    """How far the service may find this file's outputs from the recorded ones on the reference images.
    Float formats: their gate. Int8: the largest difference export measured on the whole test set."""
    limit = options.gates_for(fmt.family).get("max_abs_diff")
    if limit is not None:
        return float(limit)
    return float(max(verdict.max_abs_diff or 0.0, 1 / 255) + 1e-6)


def write_references(staging: Path, reference_x, reference_y, labels, verdicts, compared: dict[str, ComparedModel],
                     options: ExportOptions) -> dict:
    """Reference images as PNG plus their expected outputs, for the service's start-up check and for
    on-device checks. PNG is lossless, so decode_image gives back exactly these pixels."""
    folder = staging / REFERENCE_DIR
    folder.mkdir()
    samples = []
    for index, (image, label) in enumerate(zip(reference_x, reference_y, strict=True)):
        file = f"sample_{index:02d}.png"
        (folder / file).write_bytes(png_bytes(image))
        samples.append({"file": file, "label": labels[int(label)], "label_index": int(label)})
    expected = {reference_key(source): model.reference_probs for source, model in compared.items()}
    observed = {v.key: v.reference_outputs for v in verdicts if v.reference_outputs is not None}
    scored = {v.key: v.reference_ood for v in verdicts if v.reference_ood is not None}
    for position, sample in enumerate(samples):
        sample["expected"] = {k: [round(float(p), 7) for p in v[position]] for k, v in expected.items()}
        sample["observed_at_export"] = {k: [round(float(p), 7) for p in v[position]] for k, v in observed.items()}
        if scored:
            sample["ood_score_at_export"] = {k: round(float(v[position]), 6) for k, v in scored.items()}
    document = {
        "about": "Reference inputs with the outputs of the Keras model at training=False (and of fine-tuned "
                 "models for QAT/pruned files). A runtime must reproduce them within the artifact's tolerance "
                 "and give the same top class, identically on every run.",
        "samples": samples,
        "compare_with": {v.key: FORMATS[v.key].reference_key for v in verdicts},
        "tolerance": {v.key: reference_tolerance(v, FORMATS[v.key], options) for v in verdicts},
    }
    atomic_write_json(staging / REFERENCE_FILE, document)
    return document


def build_manifest(card: ModelCard, version: int, verdicts: list[verify.Verdict], staging: Path,
                   options: ExportOptions, reference_doc: dict, compared: dict[str, ComparedModel]) -> dict:
    artifacts = {}
    for verdict in verdicts:
        fmt = FORMATS[verdict.key]
        path = staging / fmt.file
        entry = {
            "file": fmt.file,
            "format": fmt.container,
            "runtime": fmt.runtime,
            "precision": fmt.precision,
            "description": fmt.description,
            "bytes": tree_size(path),
            "sha256": tree_sha256(path),
            "input": verdict.io.get("input", {}),
            "output": verdict.io.get("output", {}),
            "accuracy": verdict.accuracy,
            "accuracy_drop_points": verdict.accuracy_drop_points,
            "agreement": verdict.agreement,
            "ties": verdict.ties,
            "max_abs_diff": verdict.max_abs_diff,
            "latency_ms": verdict.latency_ms,
            "ece": verdict.ece,
            "compared_with": verdict.source,
            "gates": options.gates_for(fmt.family),
            "status": verdict.status,
            "checks": {
                "ops": verdict.ops,
                "random_ops": verdict.random_ops,
                "no_random_ops": not verdict.random_ops,
                "deterministic": verdict.deterministic,
                "reference_tolerance": reference_doc["tolerance"][verdict.key],
                "reference_expected": reference_doc["compare_with"][verdict.key],
            },
        }
        if path.is_file():
            entry["gzip_bytes"] = len(zlib.compress(path.read_bytes(), 9))  # pruning pays off here
        if fmt.is_tflite:
            entry["labels_embedded"] = convert.LABELS_METADATA
            found = tflite_files.read_metadata(path.read_bytes())
            entry["metadata"] = {"standard": "TFLite Model Metadata", "name": found["name"],
                                 "version": found["version"], "min_parser_version": found["min_parser_version"],
                                 "associated_files": found["associated_files"]}
            # MediaPipe Tasks' ImageClassifier takes 3-channel models with one output, and reads the metadata.
            entry["mediapipe_ready"] = entry["input"].get("shape", [0])[-1] == MEDIAPIPE_CHANNELS
            if fmt.rgb_of:
                entry["rgb_of"] = fmt.rgb_of
        if fmt.source != "keras":
            entry["fine_tune"] = compared[fmt.source].fine_tune or {}
        if verdict.ood:
            detector = compared[fmt.source].detector_file
            entry["ood"] = {**verdict.ood, "detector": detector, "sha256": sha256_file(staging / detector)}
        artifacts[verdict.key] = entry
    height, width, channels = card.input_shape
    manifest = {
        "schema": SCHEMA,
        "name": card.name,
        "version": version,
        "labels": card.labels,
        "input": {
            "name": convert.INPUT_NAME, "shape": [None, height, width, channels], "dtype": "uint8",
            "layout": "NHWC", "color_mode": "grayscale" if channels == 1 else "rgb", "range": [0, 255],
            "recipe": card.recipe.as_manifest(),
            "decoding": "contract.decode_image: first frame, EXIF orientation, transparency on white, then the "
                        "input recipe (contract/recipes.py); raw 0-255 pixels, the scaling is inside the model",
        },
        "output": {"name": convert.OUTPUT_NAME, "shape": [None, len(card.labels)], "dtype": "float32",
                   "activation": "softmax (of the logits divided by the calibration temperature)"},
        "source": card.source,
        "artifacts": artifacts,
        "reference": {"file": REFERENCE_FILE, "count": len(reference_doc["samples"])},
        "mobile_bundle": BUNDLE_FILE,
        "benchmark": TABLE_FILE,
        "checks": {
            "parity": "every artifact was run by its runtime on the held-out test images and compared with its source",
            "inference_mode": "no dropout or random ops in any graph; 5 runs on the reference images bit-identical",
        },
        "exported_with": _versions(),
    }
    if card.calibration is not None:
        manifest["calibration"] = card.calibration
    if card.ood is not None:
        manifest["ood"] = card.ood
    return manifest


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert",
                    "tensorflow-model-optimization"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def format_table(verdicts: list[verify.Verdict], staging: Path, source_accuracy: float) -> str:
    header = (f"{'format':<20} {'status':<7} {'size':>9} {'accuracy':>9} {'agreement':>10} {'max diff':>9} "
              f"{'latency':>10}")
    lines = [f"Held-out accuracy of best.keras: {source_accuracy * 100:.2f} %", header, "-" * len(header)]
    for v in verdicts:
        path = staging / FORMATS[v.key].file
        size = f"{tree_size(path) / 1e6:.2f} MB" if path.exists() else "-"
        lines.append(
            f"{v.key:<20} {v.status:<7} {size:>9} "
            f"{_pct(v.accuracy):>9} {_pct(v.agreement):>10} "
            f"{(f'{v.max_abs_diff:.1e}' if v.max_abs_diff is not None else '-'):>9} "
            f"{(f'{v.latency_ms:.3f} ms' if v.latency_ms is not None else '-'):>10}"
        )
        for failure in v.failures:
            lines.append(f"    ! {v.key}: {failure}")
    return "\n".join(lines)


def _pct(value) -> str:
    return f"{value * 100:.2f} %" if value is not None else "-"


def result_json(result: ExportResult) -> dict:
    return {
        "published": str(result.published) if result.published else None,
        "name": result.name,
        "source_accuracy": result.source_accuracy,
        "artifacts": {v.key: {"status": v.status, "failures": v.failures, "accuracy": v.accuracy,
                              "agreement": v.agreement, "max_abs_diff": v.max_abs_diff,
                              "latency_ms": v.latency_ms} for v in result.verdicts},
    }


def write_report(path: Path, result: ExportResult) -> None:
    path.write_text(json.dumps(result_json(result), indent=2) + "\n", encoding="utf-8")
