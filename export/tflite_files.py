"""Edits of a converted .tflite file, all with LiteRT's flatbuffer schema (no TensorFlow), in the order export
applies them: the `labels` entry older readers use, an RGB input for greyscale models, and last the standard
TFLite Model Metadata.

RGB input. MediaPipe Tasks' ImageClassifier (Android, iOS, web) takes only 3-channel models. For a greyscale
model, `with_rgb_input` puts Pillow's own luma in front of the converted graph: floor((R x 19595 + G x 38470 +
B x 7471 + 32768) / 65536), one 1x1 CONV_2D with those weights over 65536 and a bias of 0.5, then FLOOR. Every
partial sum is a multiple of 1/65536 below 256, which float32 holds exactly, in any order of summation, so the
result is exactly Pillow's convert("L"), and a photo with R = G = B gets its grey value back: the rest of the
graph, weights and quantization included, is the greyscale file's, byte for byte. (Converting a Keras model
with the luma inside would re-run the int8 calibration, and the int8 converter has no FLOOR.)

Metadata. Written here from the published schema (tensorflow/tflite-support's metadata_schema.fbs, the one
MediaPipe reads; file identifier "M001") with the flatbuffers Builder, rather than with MediaPipe's writer: that
one needs a second environment (mediapipe 1.2.3 pins absl-py 2.x, tfmot 1.x), and its wheel lacks a module the
writer imports. MediaPipe itself checks the result in the tests (.venv-mediapipe). It must be the last write:
the labels travel as a zip appended after the flatbuffer, and re-serialising the flatbuffer drops it. The zip's
entries have a fixed time, so the bytes depend on the model and the labels only.
"""

from __future__ import annotations

import io
import zipfile

import flatbuffers
import numpy as np

LABELS_METADATA = "labels"  # pocketcnn's own entry: labels.txt, one per line (kept for older readers)
METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
LABELS_FILE = "labels.txt"
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
MIN_PARSER_VERSION = "1.0.0"  # labels as TENSOR_AXIS_LABELS, NormalizationOptions, ImageProperties: all 1.0.0

# Enum and union values of metadata_schema.fbs.
TENSOR_AXIS_LABELS = 2
COLOR_SPACE = {1: 2, 3: 1}          # channels -> ColorSpaceType: GRAYSCALE = 2, RGB = 1
FEATURE_PROPERTIES, IMAGE_PROPERTIES = 1, 2  # union ContentProperties
NORMALIZATION_OPTIONS = 1                    # union ProcessUnitOptions


class MetadataError(ValueError):
    """The file cannot carry the metadata (what it says is what a reader would get wrong)."""


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _unpack(flatbuffer: bytes):
    return _schema().ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)


def _pack(model) -> bytes:
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _add_buffer(model, data: bytes | None) -> int:
    buffer = _schema().BufferT()
    buffer.data = None if data is None else np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def _set_metadata(model, name: str, data: bytes) -> None:
    entry = _schema().MetadataT()
    entry.name = name
    entry.buffer = _add_buffer(model, data)
    model.metadata = [m for m in (model.metadata or []) if m.name not in (name, name.encode())] + [entry]


def embed_labels(flatbuffer: bytes, labels: list[str]) -> bytes:
    """labels.txt in the model's metadata table under "labels" (pocketcnn's reference client reads it there)."""
    model = _unpack(flatbuffer)
    _set_metadata(model, LABELS_METADATA, "".join(f"{label}\n" for label in labels).encode("utf-8"))
    return _pack(model)


def _opcode(model, builtin: int) -> int:
    """The index of `builtin` in the model's operator codes, added (version 1) if the graph has none."""
    schema = _schema()
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _tensor(graph, name: str, shape: list[int], dtype: int, buffer: int = 0, quantization=None,
            signature: list[int] | None = None) -> int:
    tensor = _schema().TensorT()
    tensor.name, tensor.shape, tensor.type, tensor.buffer = name, np.array(shape, np.int32), dtype, buffer
    tensor.quantization = quantization
    if signature is not None:
        tensor.shapeSignature = np.array(signature, np.int32)
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _operator(model, builtin: int, inputs: list[int], outputs: list[int], options=None, options_type: int = 0):
    operator = _schema().OperatorT()
    operator.opcodeIndex = _opcode(model, builtin)
    operator.inputs, operator.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
    operator.builtinOptionsType, operator.builtinOptions = options_type, options
    return operator


# Pillow's ImagingConvertRGB2L: L = (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16.
LUMA_WEIGHTS = (19595, 38470, 7471)


def with_rgb_input(flatbuffer: bytes) -> bytes:
    """The greyscale .tflite with an RGB input: Pillow's luma (exact) in front of the unchanged graph. The input
    keeps the greyscale file's type: float32, or uint8 quantized (1.0, 0) (raw pixels, as MediaPipe feeds them)."""
    schema = _schema()
    model = _unpack(flatbuffer)
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1:
        raise MetadataError(f"an image classifier has one input; this file has {len(graph.inputs)}")
    grey_index = int(graph.inputs[0])
    grey = graph.tensors[grey_index]
    shape = [int(v) for v in grey.shape]
    if len(shape) != 4 or shape[3] != 1:
        raise MetadataError(f"the input is {shape}, not [1, height, width, 1]: only greyscale files get an RGB input")
    rgb_shape = shape[:3] + [3]
    signature = None if grey.shapeSignature is None else [int(v) for v in grey.shapeSignature[:3]] + [3]
    float32 = schema.TensorType.FLOAT32
    if grey.type == float32:
        quantized = False
    elif grey.type == schema.TensorType.UINT8 and _scale_zero(grey.quantization) == (1.0, 0):
        quantized = True
    else:
        raise MetadataError(f"the input is {_type_name(grey.type)} quantized {_scale_zero(grey.quantization)}; "
                            "an RGB input is made for float32 or uint8 (1.0, 0) inputs only")

    def float_tensor(name, tensor_shape, tensor_signature=None, data=None):
        buffer = _add_buffer(model, None if data is None else np.asarray(data, np.float32).tobytes())
        return _tensor(graph, name, tensor_shape, float32, buffer, signature=tensor_signature)

    grey_signature = None if grey.shapeSignature is None else [int(v) for v in grey.shapeSignature]
    weights = float_tensor("rgb_to_grey/weights", [1, 1, 1, 3], data=[w / 65536 for w in LUMA_WEIGHTS])
    bias = float_tensor("rgb_to_grey/bias", [1], data=[0.5])
    summed = float_tensor("rgb_to_grey/sum", shape, grey_signature)
    floored = float_tensor("rgb_to_grey/luma", shape, grey_signature) if quantized else grey_index
    operators = []
    if quantized:
        rgb = _tensor(graph, "image_rgb", rgb_shape, schema.TensorType.UINT8, _add_buffer(model, None),
                      _quantization(1.0, 0), signature)
        rgb_float = float_tensor("rgb_to_grey/pixels", rgb_shape, signature)
        operators.append(_operator(model, schema.BuiltinOperator.DEQUANTIZE, [rgb], [rgb_float]))
    else:
        rgb = rgb_float = float_tensor("image_rgb", rgb_shape, signature)
    conv = schema.Conv2DOptionsT()
    conv.padding, conv.strideW, conv.strideH = schema.Padding.VALID, 1, 1
    conv.dilationWFactor = conv.dilationHFactor = 1
    conv.fusedActivationFunction = schema.ActivationFunctionType.NONE
    operators.append(_operator(model, schema.BuiltinOperator.CONV_2D, [rgb_float, weights, bias], [summed], conv,
                               schema.BuiltinOptions.Conv2DOptions))
    operators.append(_operator(model, schema.BuiltinOperator.FLOOR, [summed], [floored]))
    if quantized:
        operators.append(_operator(model, schema.BuiltinOperator.QUANTIZE, [floored], [grey_index]))
    graph.operators = operators + list(graph.operators)
    graph.inputs = np.array([rgb], np.int32)
    for signature_def in model.signatureDefs or []:
        for tensor_map in signature_def.inputs or []:
            if tensor_map.tensorIndex == grey_index:
                tensor_map.tensorIndex = rgb
    return _pack(model)


def _quantization(scale: float, zero_point: int):
    quantization = _schema().QuantizationParametersT()
    quantization.scale = np.array([scale], np.float32)
    quantization.zeroPoint = np.array([zero_point], np.int64)
    return quantization


def _scale_zero(quantization) -> tuple[float, int] | None:
    if quantization is None or quantization.scale is None or not len(quantization.scale):
        return None
    return float(quantization.scale[0]), int(quantization.zeroPoint[0])


def _type_name(dtype: int) -> str:
    names = {value: name for name, value in vars(_schema().TensorType).items() if not name.startswith("_")}
    return names.get(dtype, str(dtype)).lower()


def _floats(builder: flatbuffers.Builder, values) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependFloat32(float(value))
    return builder.EndVector()


def _offsets(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _table(builder: flatbuffers.Builder, fields: list[tuple[int, str, object]]) -> int:
    """A table from (slot, kind, value) fields; kind: "offset" or "byte"."""
    builder.StartObject(max(slot for slot, _, _ in fields) + 1 if fields else 0)
    for slot, kind, value in fields:
        if value is None:
            continue
        if kind == "offset":
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
        else:
            builder.PrependUint8Slot(slot, value, 0)
    return builder.EndObject()


def metadata_flatbuffer(name: str, version: str, description: str, channels: int, input_range: tuple[float, float],
                        output_range: tuple[float, float], author: str | None = None) -> bytes:
    """ModelMetadata for an image classifier taking raw 0-255 pixels (scaling inside the model: mean 0, std 1)."""
    builder = flatbuffers.Builder(1024)
    text = {key: builder.CreateString(value) for key, value in (
        ("name", name), ("version", version), ("description", description), ("image", "image"),
        ("image_description", "The photo, raw 0-255 pixels after the model's input recipe (see the description)."),
        ("score", "probability"), ("score_description", "The probability of each label (calibrated)."),
        ("labels", LABELS_FILE), ("labels_description", "The labels, one per line, in output order."),
        ("parser", MIN_PARSER_VERSION), ("author", author or ""))}
    # Input: image properties, normalization (identity: the model scales its own input), value range.
    normalization = _table(builder, [(0, "offset", _floats(builder, [0.0] * channels)),
                                     (1, "offset", _floats(builder, [1.0] * channels))])
    unit = _table(builder, [(0, "byte", NORMALIZATION_OPTIONS), (1, "offset", normalization)])
    image = _table(builder, [(0, "byte", COLOR_SPACE[channels])])
    content = _table(builder, [(0, "byte", IMAGE_PROPERTIES), (1, "offset", image)])
    stats = _table(builder, [(0, "offset", _floats(builder, [input_range[1]] * channels)),
                             (1, "offset", _floats(builder, [input_range[0]] * channels))])
    tensor_in = _table(builder, [(0, "offset", text["image"]), (1, "offset", text["image_description"]),
                                 (3, "offset", content), (4, "offset", _offsets(builder, [unit])),
                                 (5, "offset", stats)])
    # Output: scores, with the labels as an associated file on the class axis.
    labels = _table(builder, [(0, "offset", text["labels"]), (1, "offset", text["labels_description"]),
                              (2, "byte", TENSOR_AXIS_LABELS)])
    feature = _table(builder, [])
    out_content = _table(builder, [(0, "byte", FEATURE_PROPERTIES), (1, "offset", feature)])
    out_stats = _table(builder, [(0, "offset", _floats(builder, [output_range[1]])),
                                 (1, "offset", _floats(builder, [output_range[0]]))])
    tensor_out = _table(builder, [(0, "offset", text["score"]), (1, "offset", text["score_description"]),
                                  (3, "offset", out_content), (5, "offset", out_stats),
                                  (6, "offset", _offsets(builder, [labels]))])
    subgraph = _table(builder, [(2, "offset", _offsets(builder, [tensor_in])),
                                (3, "offset", _offsets(builder, [tensor_out]))])
    model = _table(builder, [(0, "offset", text["name"]), (1, "offset", text["description"]),
                             (2, "offset", text["version"]), (3, "offset", _offsets(builder, [subgraph])),
                             (4, "offset", text["author"] if author else None),
                             (7, "offset", text["parser"])])
    builder.Finish(model, file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def with_metadata(flatbuffer: bytes, labels: list[str], name: str, version: str, description: str,
                  author: str = "pocketcnn") -> bytes:
    """The .tflite with its TFLite Model Metadata and labels.txt appended (zip, fixed times). Other metadata
    entries (pocketcnn's own "labels", the converter's) are kept. Refuses what a reader would get wrong."""
    schema = _schema()
    model = _unpack(flatbuffer)
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise MetadataError(f"an image classifier has one input and one output; this file has {len(graph.inputs)} "
                            f"and {len(graph.outputs)}")
    tensor_in, tensor_out = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    shape = [int(v) for v in tensor_in.shape]
    if len(shape) != 4 or shape[3] not in COLOR_SPACE:
        raise MetadataError(f"the input is {shape}, not [1, height, width, 1 or 3]")
    if int(tensor_out.shape[-1]) != len(labels):
        raise MetadataError(f"the output has {int(tensor_out.shape[-1])} scores for {len(labels)} labels")
    if tensor_in.type == schema.TensorType.UINT8 and _scale_zero(tensor_in.quantization) != (1.0, 0):
        # MediaPipe (and apps) feed raw 0-255 bytes and ignore the input's scale and zero-point.
        raise MetadataError(f"the uint8 input is quantized {_scale_zero(tensor_in.quantization)}, not exactly "
                            "(1.0, 0): readers that feed raw pixels (MediaPipe does) would compute something else")
    if tensor_in.type not in (schema.TensorType.UINT8, schema.TensorType.FLOAT32):
        raise MetadataError(f"the input is {_type_name(tensor_in.type)}; image classifiers take uint8 or float32")
    output_range = (0.0, 255.0) if tensor_out.type == schema.TensorType.UINT8 else (0.0, 1.0)
    _set_metadata(model, METADATA_NAME, metadata_flatbuffer(name, version, description, shape[3], (0.0, 255.0),
                                                            output_range, author))
    out = io.BytesIO(_pack(model))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as archive:  # as MediaPipe's populator appends it: stored, not compressed
        info = zipfile.ZipInfo(LABELS_FILE, date_time=FIXED_ZIP_TIME)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        archive.writestr(info, "\n".join(labels).encode("utf-8"))
    return out.getvalue()


def without_metadata(tflite: bytes) -> bytes:
    """The file as it was before `with_metadata` (for the benchmark's sizes): no TFLITE_METADATA entry, its
    buffer emptied, no appended zip."""
    model = _unpack(tflite)
    for entry in model.metadata or []:
        if entry.name in (METADATA_NAME, METADATA_NAME.encode()):
            model.buffers[entry.buffer].data = None
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    return _pack(model)


def read_metadata(tflite: bytes) -> dict:
    """What a reader finds: the metadata's name, version, description, colour space, normalization, the labels
    file name and the labels in the appended zip (for the on-device client's --verify and the tests)."""
    model = _schema().Model.GetRootAs(tflite, 0)
    raw = None
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    if raw is None:
        raise MetadataError("the file has no TFLITE_METADATA entry")
    table = flatbuffers.table.Table(raw, flatbuffers.encode.Get(flatbuffers.packer.uoffset, raw, 0))
    found = {"identifier": raw[4:8].decode("ascii", "replace")}
    for key, slot in (("name", 0), ("description", 1), ("version", 2), ("min_parser_version", 7)):
        found[key] = _string(table, slot)
    with zipfile.ZipFile(io.BytesIO(tflite)) as archive:
        found["associated_files"] = archive.namelist()
        found["labels"] = archive.read(LABELS_FILE).decode("utf-8").split("\n") if LABELS_FILE in \
            archive.namelist() else None
    return found


def _string(table: flatbuffers.table.Table, slot: int) -> str | None:
    offset = table.Offset(4 + 2 * slot)
    return table.String(offset + table.Pos).decode("utf-8") if offset else None
