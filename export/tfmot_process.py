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
from pathlib import Path

import numpy as np

from export.convert import ExportContext, write_tflite

AUGMENTATION_PREFIX = "Random"  # Keras preprocessing layers that only act in training


class TfmotError(RuntimeError):
    """The model cannot go through tfmot, or the worker failed."""


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


def run_tfmot(mode: str, ctx: ExportContext, out_path: Path) -> Path:
    """Run the worker for `mode` ('qat' or 'prune'); write the .tflite (labels embedded) to out_path.

    The fine-tuned model's own outputs on the test and reference images are stored in ctx.extras,
    so the .tflite is compared with the model it really came from."""
    work = (ctx.work_dir or ctx.out_dir) / f"tfmot_{mode}"
    work.mkdir(parents=True, exist_ok=True)
    layers, weights = describe_layers(ctx.model)
    options = ctx.extras["tfmot_options"]  # epochs, learning rates, sparsity, seed: see ExportOptions
    spec = {
        "mode": mode,
        "input_shape": list(ctx.input_shape),
        "layers": layers,
        "epochs": options[f"{mode}_epochs"],
        "learning_rate": options[f"{mode}_learning_rate"],
        "sparsity": options["prune_sparsity"],
        "batch_size": 128,
        "seed": options["seed"],
        "calibration_images": len(ctx.calibration),
    }
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    np.savez(work / "weights.npz", *weights)
    np.savez(work / "data.npz", train_x=ctx.extras["train_x"], train_y=ctx.extras["train_y"],
             calibration=ctx.calibration, test_x=ctx.extras["test_x"], reference_x=ctx.extras["reference_x"])
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-m", "export.tfmot_worker", str(work)], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise TfmotError(f"the tfmot {mode} worker failed (exit {result.returncode}):\n{tail}")
    outputs = np.load(work / "outputs.npz")
    report = json.loads((work / "report.json").read_text())
    ctx.extras[f"source_{mode}"] = {
        "test_probs": outputs["test_probs"], "reference_probs": outputs["reference_probs"], "report": report,
    }
    return write_tflite(out_path, (work / "model.tflite").read_bytes(), ctx.labels)
