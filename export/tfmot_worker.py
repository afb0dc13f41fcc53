"""Worker process for quantization-aware training and pruning (run with TF_USE_LEGACY_KERAS=1).

    python -m export.tfmot_worker WORK_DIR

Reads spec.json, weights.npz and data.npz written by tfmot_process.py; writes model.tflite (full
integer, uint8 in and out), outputs.npz (the fine-tuned model's probabilities on the test and
reference images, and its features of the training sample, validation and test images, for its
out-of-distribution detector) and report.json.

The model it is given is already calibrated (its last layer divided by the temperature); fine-tuning moves
its logits, so the temperature is fitted again on the validation images, on the fine-tuned model, and
divided into its last layer before conversion, as export does for the model itself.

The Rescaling layer (which tfmot rejects) is folded into the first convolution: conv(x * s) equals
conv'(x) with the kernel multiplied by s, exactly, when the offset is zero. So the rebuilt model, and
the .tflite made from it, still take raw 0-255 pixels.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

# Structural config keys per supported layer; initializers, regularizers and constraints are left
# out on purpose (the weights are set from the trained model).
LAYER_KEYS = {
    "Conv2D": ["filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "groups",
               "activation", "use_bias"],
    "DepthwiseConv2D": ["kernel_size", "strides", "padding", "depth_multiplier", "data_format", "activation",
                        "use_bias"],
    "Dense": ["units", "activation", "use_bias"],
    "BatchNormalization": ["axis", "momentum", "epsilon", "center", "scale"],
    "ReLU": ["max_value", "negative_slope", "threshold"],
    "Activation": ["activation"],
    "MaxPooling2D": ["pool_size", "strides", "padding", "data_format"],
    "AveragePooling2D": ["pool_size", "strides", "padding", "data_format"],
    "GlobalAveragePooling2D": ["data_format", "keepdims"],
    "Flatten": ["data_format"],
    "Dropout": ["rate", "noise_shape", "seed"],
}


class UnsupportedModel(ValueError):
    pass


def rebuild(spec: dict, weights: list[np.ndarray]):
    """The Keras 3 layer list as a tf_keras Sequential model computing the same function at inference.

    Two exact folds make it deployment-faithful: Rescaling goes into the first convolution's kernel,
    and each BatchNormalization goes into the Conv2D / Dense before it (kernel and bias scaled by
    gamma / sqrt(variance + epsilon)), which is what the TFLite converter does anyway. Fake
    quantization then trains the very weights the .tflite file will hold.
    """
    import tf_keras

    model = tf_keras.Sequential(name="pocketcnn_tfmot")
    model.add(tf_keras.Input(shape=spec["input_shape"], name="image"))
    entries = spec["layers"]
    pending_scale = None
    index = 0
    while index < len(entries):
        entry = entries[index]
        kind, config = entry["class"], entry["config"]
        values = [weights[i] for i in entry["weights"]]
        index += 1
        if kind == "Rescaling":
            if np.any(np.asarray(config.get("offset", 0.0)) != 0):
                raise UnsupportedModel("Rescaling with an offset cannot be folded into a convolution for QAT")
            pending_scale = np.asarray(config["scale"], dtype=np.float32)
            continue
        if kind not in LAYER_KEYS:
            raise UnsupportedModel(f"layer '{entry['name']}' of type {kind} is not supported by the QAT/pruning "
                                   f"path (supported: {', '.join(sorted(LAYER_KEYS))}, Rescaling)")
        arguments = {k: _tuple(config[k]) for k in LAYER_KEYS[kind] if k in config and config[k] is not None}
        if pending_scale is not None:
            if kind != "Conv2D":
                raise UnsupportedModel("Rescaling must be followed directly by a Conv2D to be folded")
            values = [values[0] * pending_scale, *values[1:]]
            pending_scale = None
        if kind in ("Conv2D", "Dense") and index < len(entries) and entries[index]["class"] == "BatchNormalization":
            norm = entries[index]
            values = fold_batch_norm(values, arguments.get("use_bias", True), norm["config"],
                                     [weights[i] for i in norm["weights"]])
            arguments["use_bias"] = True
            index += 1
        layer = getattr(tf_keras.layers, kind)(name=entry["name"], **arguments)
        model.add(layer)
        if values:
            layer.set_weights(values)
    return model


def fold_batch_norm(values: list[np.ndarray], has_bias: bool, config: dict, norm: list[np.ndarray]):
    """[kernel(, bias)] of a layer followed by batch norm -> [kernel, bias] of one equivalent layer."""
    norm = list(norm)
    gamma = norm.pop(0) if config.get("scale", True) else 1.0
    beta = norm.pop(0) if config.get("center", True) else 0.0
    mean, variance = norm
    factor = gamma / np.sqrt(variance + config.get("epsilon", 1e-3))
    kernel = values[0] * factor  # the output channel is the kernel's last axis for Conv2D and Dense
    bias = values[1] if has_bias else np.zeros_like(mean)
    return [kernel.astype(np.float32), ((bias - mean) * factor + beta).astype(np.float32)]


def refit_temperature(model, val_x: np.ndarray, val_y: np.ndarray) -> float:
    """Fit the temperature of the fine-tuned model's logits on the validation images and divide it into its
    last (Dense, softmax) layer; returns it. Under QAT the layer sits in a quantize wrapper: its kernel and
    bias are the wrapped layer's."""
    from export.calibration import fit_temperature

    last = model.layers[-1]
    kernel, bias = (next(w for w in last.weights if w.name.split("/")[-1].startswith(name))
                    for name in ("kernel", "bias"))
    values = features_of(model, val_x).astype(np.float64)
    temperature = fit_temperature(values @ kernel.numpy().astype(np.float64) + bias.numpy(), val_y)
    kernel.assign((kernel.numpy() / temperature).astype(np.float32))
    bias.assign((bias.numpy() / temperature).astype(np.float32))
    return round(float(temperature), 6)


def features_of(model, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """What the model's last layer reads (the layers before it, in order, at inference), for every image."""
    parts = []
    for start in range(0, len(images), batch):
        x = images[start:start + batch].astype(np.float32)
        for layer in model.layers[:-1]:
            x = layer(x, training=False)
        parts.append(np.asarray(x).reshape(len(x), -1))
    return np.concatenate(parts)


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


def main(work_dir: str) -> int:
    work = Path(work_dir)
    spec = json.loads((work / "spec.json").read_text())
    with np.load(work / "weights.npz") as stored:
        weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    data = dict(np.load(work / "data.npz"))

    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    tf_keras.utils.set_random_seed(spec["seed"])
    tf.config.experimental.enable_op_determinism()  # same fine-tune, same bytes, export after export
    try:
        base = rebuild(spec, weights)
    except UnsupportedModel as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    train_x = data["train_x"].astype(np.float32)
    train_y = data["train_y"]
    report = {"mode": spec["mode"], "fine_tune_images": int(len(train_x)), "epochs": spec["epochs"],
              "learning_rate": spec["learning_rate"]}

    if spec["mode"] == "qat":
        model = tfmot.quantization.keras.quantize_model(base)
        callbacks = []
    else:
        steps = spec["epochs"] * int(np.ceil(len(train_x) / spec["batch_size"]))
        # Reach the target sparsity in the first half of the fine-tune, then let the rest recover.
        schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, spec["sparsity"], begin_step=0,
                                                        end_step=max(1, steps // 2), frequency=max(1, steps // 20))
        model = tfmot.sparsity.keras.prune_low_magnitude(base, pruning_schedule=schedule)
        callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
    model.compile(optimizer=tf_keras.optimizers.Adam(spec["learning_rate"]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_x, train_y, batch_size=spec["batch_size"], epochs=spec["epochs"], shuffle=True,
              callbacks=callbacks, verbose=0)
    if spec["mode"] == "prune":
        model = tfmot.sparsity.keras.strip_pruning(model)
        kernels = [w for layer in model.layers for w in layer.get_weights()[:1]
                   if isinstance(layer, (tf_keras.layers.Conv2D, tf_keras.layers.Dense))]
        report["sparsity"] = float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))

    report["temperature"] = refit_temperature(model, data["val_x"], data["val_y"])

    def probabilities(images):
        return np.concatenate([model(images[i:i + 512].astype(np.float32), training=False).numpy()
                               for i in range(0, len(images), 512)])

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    calibration = data["calibration"]
    converter.representative_dataset = lambda: ([image[np.newaxis].astype(np.float32)] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    (work / "model.tflite").write_bytes(converter.convert())
    np.savez(work / "outputs.npz", test_probs=probabilities(data["test_x"]),
             reference_probs=probabilities(data["reference_x"]), train_features=features_of(model, data["train_x"]),
             validation_features=features_of(model, data["val_x"]), test_features=features_of(model, data["test_x"]))
    (work / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        print("error: run with TF_USE_LEGACY_KERAS=1 (tfmot needs tf_keras)", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
