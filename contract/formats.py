"""The one table of model formats: file, runtime, precision, where it comes from. Every stage reads it.

Export writes and checks each format, the service loads the one it is told to serve, the mobile bundle
takes the .tflite ones, the benchmarks compare them: none of them keeps its own list. No TensorFlow
here, so the serving install and the clients can read the table too.
"""

from __future__ import annotations

from dataclasses import dataclass

# What loads each kind of file: the runtimes phones and servers use (TensorFlow only for the SavedModel).
RUNTIME_CONTAINER = {"litert": "tflite", "onnxruntime": "onnx", "tensorflow": "savedmodel"}
SERVING_RUNTIMES = ("litert", "onnxruntime")  # what the serving install has (no TensorFlow)


def source_name(source: str) -> str:
    """A source model in words: keras, or "qat fine-tuned model"..."""
    return "keras" if source == "keras" else f"{source} fine-tuned model"


def reference_key(source: str) -> str:
    """Where reference/reference.json keeps the outputs of a source model: keras, qat_fine_tuned, ..."""
    return "keras" if source == "keras" else f"{source}_fine_tuned"


MEDIAPIPE_CHANNELS = 3  # MediaPipe Tasks' ImageClassifier takes RGB models only


@dataclass(frozen=True)
class Format:
    key: str            # what users type in --formats and what the manifest calls the artifact
    file: str           # file (or directory) name inside the model version
    runtime: str        # what loads it: litert | onnxruntime | tensorflow
    precision: str      # float32 | float16 | dynamic-int8 | int8
    family: str         # gate family: float32 | float16 | int8
    source: str = "keras"  # the model it is converted from: keras (best.keras) or a fine-tuned copy: qat | prune
    opt_in: str = ""    # CLI flag that enables it, if it is not in the release defaults
    description: str = ""
    rgb_of: str = ""    # for a greyscale model: the format whose graph this one runs after an RGB-to-grey input

    def applies_to(self, channels: int) -> bool:
        """RGB-input variants exist for greyscale models only (an RGB model's files already take RGB)."""
        return not self.rgb_of or channels == 1

    @property
    def container(self) -> str:
        """tflite | onnx | savedmodel: the manifest's "format" of the artifact."""
        return RUNTIME_CONTAINER[self.runtime]

    @property
    def is_tflite(self) -> bool:
        return self.runtime == "litert"

    @property
    def needs_tensorflow(self) -> bool:
        return self.runtime not in SERVING_RUNTIMES

    @property
    def reference_key(self) -> str:
        """The key of the expected outputs in reference/reference.json this file must reproduce."""
        return reference_key(self.source)

    @property
    def compared_with(self) -> str:
        """The model this file's agreement is measured against, in words (the manifest's compared_with)."""
        return source_name(self.source)


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
    Format("tflite_float32_rgb", "model_float32_rgb.tflite", "litert", "float32", "float32", rgb_of="tflite_float32",
           description="tflite_float32 with an RGB input (Pillow's luma inside, exact): for MediaPipe ImageClassifier"),
    Format("tflite_int8_rgb", "model_int8_rgb.tflite", "litert", "int8", "int8", rgb_of="tflite_int8",
           description="tflite_int8 with an RGB input (Pillow's luma inside, exact): for MediaPipe ImageClassifier"),
    Format("tflite_qat_int8", "model_qat_int8.tflite", "litert", "int8", "int8", source="qat", opt_in="--qat",
           description="TFLite full-integer int8 after quantization-aware fine-tuning (tfmot)"),
    Format("tflite_pruned_int8", "model_pruned_int8.tflite", "litert", "int8", "int8", source="prune",
           opt_in="--prune", description="TFLite full-integer int8 of a magnitude-pruned, fine-tuned model (tfmot)"),
    Format("onnx", "model.onnx", "onnxruntime", "float32", "float32",
           description="ONNX (opset 17), dynamic batch dimension named 'batch'"),
)}

DEFAULT_FORMATS = tuple(key for key, f in FORMATS.items() if not f.opt_in)
FINE_TUNES = tuple(dict.fromkeys(f.source for f in FORMATS.values() if f.source != "keras"))  # qat, prune


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
        raise UnknownFormat(f"unknown format {', '.join(repr(k) for k in unknown)}; "
                            f"valid formats: {', '.join(FORMATS)}")
    for flag, wanted in (("--qat", qat), ("--prune", prune)):
        keys += [k for k, f in FORMATS.items() if wanted and f.opt_in == flag and k not in keys]
    return [FORMATS[k] for k in FORMATS if k in keys]  # table order, no duplicates
