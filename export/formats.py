"""The one table of export formats: file, runtime, precision, gates. Everything else reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    key: str            # what users type in --formats and what the manifest calls the artifact
    file: str           # file (or directory) name inside the model version
    runtime: str        # what loads it for the parity check: the runtime phones and servers use
    precision: str      # float32 | float16 | dynamic-int8 | int8
    family: str         # gate family: float32 | float16 | int8
    opt_in: str = ""    # CLI flag that enables it, if it is not in the release defaults
    description: str = ""

    @property
    def is_tflite(self) -> bool:
        return self.runtime == "litert"


FORMATS: dict[str, Format] = {f.key: f for f in (
    Format("savedmodel", "saved_model", "tensorflow", "float32", "float32",
           description="TensorFlow SavedModel, signature serving_default: image -> probabilities"),
    Format("tflite_float32", "model_float32.tflite", "litert", "float32", "float32",
           description="TFLite, float32 weights and activations"),
    Format("tflite_float16", "model_float16.tflite", "litert", "float16", "float16",
           description="TFLite, float16 weights (half the size), float32 compute on CPU"),
    Format("tflite_dynamic", "model_dynamic_range.tflite", "litert", "dynamic-int8", "int8",
           description="TFLite, int8 weights, activations quantized on the fly"),
    Format("tflite_int8", "model_int8.tflite", "litert", "int8", "int8",
           description="TFLite full-integer int8, uint8 input and output, calibrated on training images"),
    Format("tflite_qat_int8", "model_qat_int8.tflite", "litert", "int8", "int8", opt_in="--qat",
           description="TFLite full-integer int8 after quantization-aware fine-tuning (tfmot)"),
    Format("tflite_pruned_int8", "model_pruned_int8.tflite", "litert", "int8", "int8", opt_in="--prune",
           description="TFLite full-integer int8 of a magnitude-pruned, fine-tuned model (tfmot)"),
    Format("onnx", "model.onnx", "onnxruntime", "float32", "float32",
           description="ONNX (opset 17), dynamic batch dimension named 'batch'"),
)}

DEFAULT_FORMATS = tuple(key for key, f in FORMATS.items() if not f.opt_in)


@dataclass(frozen=True)
class Gates:
    """Release gates; each can be overridden on the command line."""

    float_min_agreement: float = 0.999   # top-1 agreement with the source model, float formats
    float32_max_diff: float = 1e-4       # max |probability difference|, float32 formats
    float16_max_diff: float = 1e-2
    int8_min_agreement: float = 0.99
    int8_max_accuracy_drop: float = 1.0  # percentage points of held-out accuracy

    def for_family(self, family: str) -> dict:
        if family == "float32":
            return {"min_agreement": self.float_min_agreement, "max_abs_diff": self.float32_max_diff}
        if family == "float16":
            return {"min_agreement": self.float_min_agreement, "max_abs_diff": self.float16_max_diff}
        return {"min_agreement": self.int8_min_agreement, "max_accuracy_drop_points": self.int8_max_accuracy_drop}


class UnknownFormat(ValueError):
    pass


def parse_formats(text: str, qat: bool = False, prune: bool = False) -> list[Format]:
    """'all', 'default' or a comma-separated list of keys, plus the opt-in flags."""
    keys = [k.strip() for k in text.split(",") if k.strip()] if text else list(DEFAULT_FORMATS)
    if keys == ["all"]:
        keys = list(FORMATS)
    elif keys == ["default"]:
        keys = list(DEFAULT_FORMATS)
    unknown = [k for k in keys if k not in FORMATS]
    if unknown:
        raise UnknownFormat(f"unknown format {', '.join(repr(k) for k in unknown)}; valid formats: {', '.join(FORMATS)}")
    if qat and "tflite_qat_int8" not in keys:
        keys.append("tflite_qat_int8")
    if prune and "tflite_pruned_int8" not in keys:
        keys.append("tflite_pruned_int8")
    return [FORMATS[k] for k in FORMATS if k in keys]  # table order, no duplicates
