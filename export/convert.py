"""One function per format, each writing one file and returning its path. Heavy libraries are
imported inside the function that needs them."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.formats import FORMATS, Format
from contract.runtime import FEATURES

log = logging.getLogger("export")

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"
ONNX_OPSET = 17
LABELS_METADATA = "labels"  # name of the TFLite metadata entry that holds labels.txt


@dataclass
class ExportContext:
    model: object                 # the Keras model from best.keras
    out_dir: Path                 # the staging folder of the version being written
    labels: list[str]
    input_shape: tuple[int, int, int]
    calibration: np.ndarray       # uint8 training images for int8 calibration
    opset: int = ONNX_OPSET
    work_dir: Path | None = None  # scratch space (a SavedModel for the TFLite converter, if not exported)

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


def write_tflite(path: Path, flatbuffer: bytes, labels: list[str]) -> Path:
    path.write_bytes(embed_labels(flatbuffer, labels))
    return path


def embed_labels(flatbuffer: bytes, labels: list[str]) -> bytes:
    """Add labels.txt to the model's metadata table (LiteRT's flatbuffer tools), so an app can read the
    class names from the .tflite file alone. Inference is unaffected; the parity checks run on these bytes."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer("".join(f"{label}\n" for label in labels).encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = LABELS_METADATA
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != LABELS_METADATA.encode()] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


@timed("TFLite float32")
def export_tflite_float32(ctx: ExportContext) -> Path:
    converter = _tflite_converter(ctx)
    return write_tflite(ctx.path("tflite_float32"), converter.convert(), ctx.labels)


@timed("TFLite float16")
def export_tflite_float16(ctx: ExportContext) -> Path:
    import tensorflow as tf

    converter = _tflite_converter(ctx)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    return write_tflite(ctx.path("tflite_float16"), converter.convert(), ctx.labels)


@timed("TFLite dynamic range")
def export_tflite_dynamic(ctx: ExportContext) -> Path:
    import tensorflow as tf

    converter = _tflite_converter(ctx)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: weights-only int8
    return write_tflite(ctx.path("tflite_dynamic"), converter.convert(), ctx.labels)


@timed("TFLite int8")
def export_tflite_int8(ctx: ExportContext) -> Path:
    import tensorflow as tf

    converter = _tflite_converter(ctx)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(ctx.calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8   # raw pixels straight from the camera
    converter.inference_output_type = tf.uint8
    return write_tflite(ctx.path("tflite_int8"), converter.convert(), ctx.labels)


@timed("TFLite from a fine-tuned model")
def export_fine_tuned(ctx: ExportContext, fmt: Format, flatbuffer: bytes) -> Path:
    """A .tflite the tfmot worker converted from its fine-tuned model (QAT, pruning), with labels embedded."""
    return write_tflite(ctx.path(fmt.key), flatbuffer, ctx.labels)


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
    "tflite_float32": export_tflite_float32,
    "tflite_float16": export_tflite_float16,
    "tflite_dynamic": export_tflite_dynamic,
    "tflite_int8": export_tflite_int8,
    "onnx": export_onnx,
}
if set(EXPORTERS) != {k for k, f in FORMATS.items() if f.source == "keras"}:
    raise RuntimeError("every format of best.keras in contract/formats.py needs an exporter here")
