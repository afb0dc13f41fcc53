"""One function per format, each writing one file and returning its path. Heavy libraries are
imported inside the function that needs them."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.formats import FORMATS, Format
from contract.runtime import FEATURES
from export import tflite_files

log = logging.getLogger("export")

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"
ONNX_OPSET = 17
LABELS_METADATA = tflite_files.LABELS_METADATA  # the TFLite metadata entry that holds labels.txt (older readers)


@dataclass(frozen=True)
class ModelIdentity:
    """What the standard TFLite metadata says about the model (MediaPipe and app stores show it)."""

    name: str
    version: str       # the run and the first digits of best.keras's sha256: the same model, the same bytes
    description: str   # what the model takes and gives, and the input recipe a photo needs first

    def for_file(self, fmt: Format) -> dict:
        colour = ("RGB input, converted to grey inside the model exactly as Pillow's convert(\"L\"). "
                  if fmt.rgb_of else "")
        return {"name": self.name, "version": self.version, "description": colour + self.description}


@dataclass
class ExportContext:
    model: object                 # the Keras model from best.keras
    out_dir: Path                 # the staging folder of the version being written
    labels: list[str]
    input_shape: tuple[int, int, int]
    calibration: np.ndarray       # uint8 training images for int8 calibration
    opset: int = ONNX_OPSET
    work_dir: Path | None = None  # scratch space (a SavedModel for the TFLite converter, if not exported)
    identity: ModelIdentity | None = None  # for the standard TFLite metadata (None: a test's own name)
    converted: dict[str, bytes] = field(default_factory=dict)  # converter output by format (RGB variants reuse it)

    def path(self, key: str) -> Path:
        return self.out_dir / FORMATS[key].file


def timed(label: str):
    """Log start, end and seconds of an export step (the Ultralytics habit)."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            log.info("%s: exporting...", label)
            result = function(*args, **kwargs)
            size = _size(result) if isinstance(result, Path) else 0
            log.info("%s: done in %.1f s (%s)", label, time.perf_counter() - started, _human(size))
            return result
        return wrapper
    return decorate


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _human(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def with_features(model):
    """The model with a second output: the features its last layer reads (the out-of-distribution detector's
    input), from the same forward pass."""
    import keras

    return keras.Model(model.inputs, [model.outputs[0], model.layers[-1].input], name="pocketcnn_with_features")


def serving_function(model, input_shape):
    """The server-side graph (ONNX): raw pixels in; probabilities and the features out, training=False so that
    dropout and augmentation are off."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *input_shape], tf.float32, name=INPUT_NAME)
    both = with_features(model)

    @tf.function(input_signature=[spec])
    def serve(image):
        probabilities, features = both(image, training=False)
        return {OUTPUT_NAME: probabilities, FEATURES: features}

    return serve, spec


@timed("SavedModel")
def export_savedmodel(ctx: ExportContext, path: Path | None = None) -> Path:
    import tensorflow as tf
    from keras.export import ExportArchive

    path = path or ctx.path("savedmodel")
    model = ctx.model
    both = with_features(model)
    signature = [tf.TensorSpec([None, *ctx.input_shape], tf.float32, name=INPUT_NAME)]
    archive = ExportArchive()
    archive.track(both)
    # serving_default as TF Serving and the TFLite converter read it; `features` for the service's detector.
    archive.add_endpoint(name="serving_default", fn=lambda image: {OUTPUT_NAME: model(image, training=False)},
                         input_signature=signature)
    archive.add_endpoint(name=FEATURES, fn=lambda image: {FEATURES: both(image, training=False)[1]},
                         input_signature=signature)
    archive.write_out(str(path), verbose=False)
    return path


def _saved_model_for_conversion(ctx: ExportContext) -> Path:
    """The SavedModel the TFLite converter reads: the exported one, or one written to scratch space."""
    exported = ctx.path("savedmodel")
    if exported.is_dir():
        return exported
    scratch = (ctx.work_dir or ctx.out_dir) / "converter_saved_model"
    if not scratch.is_dir():
        export_savedmodel(ctx, scratch)
    return scratch


def _tflite_converter(ctx: ExportContext):
    import tensorflow as tf

    # serving_default only: the SavedModel's `features` signature is for the service, not for phones.
    return tf.lite.TFLiteConverter.from_saved_model(str(_saved_model_for_conversion(ctx)),
                                                    signature_keys=["serving_default"])


def representative_dataset(images: np.ndarray):
    """Calibration input for the int8 converter: raw 0-255 pixels, one image per step."""
    def generate():
        for image in images:
            yield [image[np.newaxis].astype(np.float32)]
    return generate


def write_tflite(ctx: ExportContext, fmt: Format, flatbuffer: bytes) -> Path:
    """The converter's flatbuffer as the published file: pocketcnn's `labels` entry, for a greyscale model's
    RGB variant the RGB input, and last the standard TFLite Model Metadata (MediaPipe reads it; nothing may
    re-serialise the file after it, or the appended labels zip is lost). Parity checks run on these bytes."""
    data = tflite_files.embed_labels(flatbuffer, ctx.labels)
    if fmt.rgb_of:
        data = tflite_files.with_rgb_input(data)
    identity = ctx.identity or ModelIdentity("model", "0", "An image classifier exported by pocketcnn.")
    data = tflite_files.with_metadata(data, ctx.labels, **identity.for_file(fmt))
    path = ctx.path(fmt.key)
    path.write_bytes(data)
    return path


def _convert_float32(ctx: ExportContext) -> bytes:
    return _tflite_converter(ctx).convert()


def _convert_float16(ctx: ExportContext) -> bytes:
    import tensorflow as tf

    converter = _tflite_converter(ctx)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def _convert_dynamic(ctx: ExportContext) -> bytes:
    import tensorflow as tf

    converter = _tflite_converter(ctx)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: weights-only int8
    return converter.convert()


def _convert_int8(ctx: ExportContext) -> bytes:
    import tensorflow as tf

    converter = _tflite_converter(ctx)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(ctx.calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8   # raw pixels straight from the camera
    converter.inference_output_type = tf.uint8
    return converter.convert()


TFLITE_CONVERTERS = {"tflite_float32": _convert_float32, "tflite_float16": _convert_float16,
                     "tflite_dynamic": _convert_dynamic, "tflite_int8": _convert_int8}


def converted_tflite(ctx: ExportContext, key: str) -> bytes:
    """The converter's output for `key`, converted once per export (an RGB variant reuses its base's)."""
    if key not in ctx.converted:
        ctx.converted[key] = TFLITE_CONVERTERS[key](ctx)
    return ctx.converted[key]


def export_tflite(ctx: ExportContext, key: str) -> Path:
    fmt = FORMATS[key]
    started = time.perf_counter()
    log.info("%s: exporting...", key)
    path = write_tflite(ctx, fmt, converted_tflite(ctx, fmt.rgb_of or key))
    log.info("%s: done in %.1f s (%s)", key, time.perf_counter() - started, _human(_size(path)))
    return path


@timed("TFLite from a fine-tuned model")
def export_fine_tuned(ctx: ExportContext, fmt: Format, flatbuffer: bytes) -> Path:
    """A .tflite the tfmot worker converted from its fine-tuned model (QAT, pruning), labels and metadata added."""
    return write_tflite(ctx, fmt, flatbuffer)


@timed("ONNX")
def export_onnx(ctx: ExportContext) -> Path:
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # its INFO lines are about its own optimizer passes
    serve, spec = serving_function(ctx.model, ctx.input_shape)
    tf2onnx.utils.INTERNAL_NAME = 1  # tf2onnx numbers inserted nodes from a global counter
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=ctx.opset,
                                             output_path=None)
    canonicalize_onnx(proto)
    path = ctx.path("onnx")
    path.write_bytes(proto.SerializeToString(deterministic=True))
    return path


def canonicalize_onnx(proto) -> None:
    """Make the file a function of the model alone: the batch dimension is named 'batch', every
    node and intermediate tensor gets a name from its position, nothing records when or where it
    was made. Exporting the same model twice then gives the same bytes."""
    graph = proto.graph
    # The probabilities first (what TF Serving-style clients read as the output), then the features.
    outputs = sorted(graph.output, key=lambda value: value.name != OUTPUT_NAME)
    outputs = [type(value).FromString(value.SerializeToString()) for value in outputs]
    del graph.output[:]
    graph.output.extend(outputs)
    for value in list(graph.input) + list(graph.output):
        first = value.type.tensor_type.shape.dim[0]
        first.Clear()
        first.dim_param = BATCH_DIM
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    renamed: dict[str, str] = {}
    # tf2onnx emits small shared constants (Slice starts/ends, ...) in an order that changes from one
    # process to the next (seen: the same model, two hashes). Order initializers by where the graph first
    # uses them, and name them from that position; unused ones go last, ordered by content.
    first_use: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            first_use.setdefault(name, len(first_use))
    initializers = sorted(graph.initializer, key=lambda t: (first_use.get(t.name, len(first_use)),
                                                            t.SerializeToString(deterministic=True)))
    initializers = [type(t).FromString(t.SerializeToString()) for t in initializers]
    del graph.initializer[:]
    for index, initializer in enumerate(initializers):
        renamed[initializer.name] = f"const_{index}"
        initializer.name = renamed[initializer.name]
        graph.initializer.append(initializer)
    for index, node in enumerate(graph.node):
        node.name = f"{node.op_type.lower()}_{index}"
        for position, output in enumerate(node.output):
            if output and output not in keep:
                renamed[output] = f"{node.name}_out{position}"
                node.output[position] = renamed[output]
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name in renamed:
                node.input[position] = renamed[name]
    value_info = [v for v in graph.value_info]
    del graph.value_info[:]
    for value in value_info:
        if value.name in renamed:
            value.name = renamed[value.name]
            graph.value_info.append(value)
    graph.name = "pocketcnn"
    proto.doc_string = ""
    graph.doc_string = ""


# One exporter per format converted from best.keras; formats of fine-tuned models go through export_fine_tuned.
EXPORTERS = {
    "savedmodel": export_savedmodel,
    "onnx": export_onnx,
    **{key: functools.partial(export_tflite, key=key) for key, fmt in FORMATS.items()
       if fmt.is_tflite and fmt.source == "keras"},
}
if set(EXPORTERS) != {k for k, f in FORMATS.items() if f.source == "keras"}:
    raise RuntimeError("every format of best.keras in contract/formats.py needs an exporter here")
