"""Parent side of the tfmot (quantization-aware training, pruning) path.

tensorflow-model-optimization only understands tf_keras models, and a process can hold only one
Keras: so the Keras 3 model is described as a list of layers plus their weights, and a separate
process with TF_USE_LEGACY_KERAS=1 (export/tfmot_worker.py) rebuilds it in tf_keras, fine-tunes it
and converts it to a full-integer .tflite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AUGMENTATION_PREFIX = "Random"  # Keras preprocessing layers that only act in training


class TfmotError(RuntimeError):
    """The model cannot go through tfmot, or the worker failed."""


@dataclass(frozen=True)
class FineTuneInputs:
    """What a fine-tune needs besides the model: the data and the settings (see ExportOptions)."""

    train_x: np.ndarray        # the run's training sample (uint8 NHWC) and its labels
    train_y: np.ndarray
    calibration: np.ndarray    # int8 calibration images
    val_x: np.ndarray          # the validation images: the fine-tuned model's temperature is fitted on them
    val_y: np.ndarray
    test_x: np.ndarray         # the held-out images the result is checked on
    reference_x: np.ndarray    # the reference images recorded for the service's self-check
    epochs: dict               # mode -> epochs
    learning_rates: dict       # mode -> learning rate
    sparsity: float            # pruning target
    seed: int


@dataclass(frozen=True)
class FineTuned:
    """A fine-tuned model's full-integer .tflite and its own outputs, which the .tflite is compared with."""

    mode: str                  # qat | prune
    flatbuffer: bytes
    test_probs: np.ndarray
    reference_probs: np.ndarray
    report: dict               # mode, images, epochs, learning rate, refitted temperature, sparsity reached
    features: dict             # its features of the training sample (train), validation and test images


def describe_layers(model) -> tuple[list[dict], list[np.ndarray]]:
    """The model as an ordered list of layers (class, config, which weights), for the worker to rebuild."""
    import keras

    layers, weights = [], []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            raise TfmotError(f"QAT and pruning do not support nested models such as '{layer.name}' "
                             "(e.g. a MobileNetV2 base); export without --qat/--prune")
        if type(layer).__name__.startswith(AUGMENTATION_PREFIX):
            continue  # identity at inference, and not part of a short fine-tune
        values = layer.get_weights()
        layers.append({"class": type(layer).__name__, "name": layer.name, "config": _plain(layer.get_config()),
                       "weights": list(range(len(weights), len(weights) + len(values)))})
        weights.extend(values)
    return layers, weights


def _plain(value):
    """JSON-safe copy of a layer config (tuples to lists, dtype policies to their name)."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy":
            return value.get("config", {}).get("name", "float32")
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def fine_tune(mode: str, model, input_shape: tuple[int, int, int], inputs: FineTuneInputs, work: Path) -> FineTuned:
    """Run the worker for `mode` ('qat' or 'prune') on `model` in `work` (a scratch folder)."""
    work.mkdir(parents=True, exist_ok=True)
    layers, weights = describe_layers(model)
    spec = {
        "mode": mode,
        "input_shape": list(input_shape),
        "layers": layers,
        "epochs": inputs.epochs[mode],
        "learning_rate": inputs.learning_rates[mode],
        "sparsity": inputs.sparsity,
        "batch_size": 128,
        "seed": inputs.seed,
        "calibration_images": len(inputs.calibration),
    }
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    np.savez(work / "weights.npz", *weights)
    np.savez(work / "data.npz", train_x=inputs.train_x, train_y=inputs.train_y, calibration=inputs.calibration,
             val_x=inputs.val_x, val_y=inputs.val_y, test_x=inputs.test_x, reference_x=inputs.reference_x)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-m", "export.tfmot_worker", str(work)], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise TfmotError(f"the tfmot {mode} worker failed (exit {result.returncode}):\n{tail}")
    with np.load(work / "outputs.npz") as outputs:
        test_probs, reference_probs = outputs["test_probs"], outputs["reference_probs"]
        features = {part: outputs[f"{part}_features"] for part in ("train", "validation", "test")}
    return FineTuned(mode, (work / "model.tflite").read_bytes(), test_probs, reference_probs,
                     json.loads((work / "report.json").read_text()), features)
