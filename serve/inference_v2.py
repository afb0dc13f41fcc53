"""The Open Inference Protocol (KServe V2), as KServe, Triton, Seldon MLServer and OpenVINO Model Server speak it
over HTTP, with Triton's binary tensor and classification extensions.

    GET  /v2                                          server metadata
    GET  /v2/health/live, /v2/health/ready            liveness; readiness (as GET /readyz)
    GET  /v2/models/<name>[/versions/<v>]             model metadata: its inputs and output
    GET  /v2/models/<name>[/versions/<v>]/ready       whether that model (version) is served: 200, else 503 or 404
    POST /v2/models/<name>[/versions/<v>]/infer       inference

Inputs (a request sends exactly one):
  image   BYTES, shape [N] or [N, 1]: encoded photos, through the model's input recipe as on /predict. Sent either
          in binary (the binary tensor extension: the JSON header, then the tensors' bytes, the header's length in
          `Inference-Header-Content-Length` and each binary input's size in "parameters": {"binary_data_size"};
          a BYTES element is its length as 4 little-endian bytes, then its bytes), or in JSON as base64 strings
          marked "parameters": {"content_type": "base64"} (MLServer's convention: a PNG is no UTF-8 string).
  pixels  UINT8 or FP32, shape [N, height, width, channels]: the model's input, 0-255.
Output: probabilities, FP32 [N, classes] in label order; with "parameters": {"classification": k} on the requested
output, Triton's classification extension instead: BYTES [N, k], "score:index:label", most likely first. Outputs are
JSON unless binary_data is asked for (per output, or "binary_data_output" for all). Answers hold the probabilities
only (no out-of-distribution fields). Errors are {"error": "<message>"}: 400, 404, 413, 503.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct

import numpy as np
from flask import Blueprint, Response, request

from contract import ImageError
from serve.inputs import ApiError
from serve.model import ModelNotFound, NamedModel, ServedModel
from serve.responses import json_response

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification"]
PLATFORMS = {"litert": "tensorflow_lite", "onnxruntime": "onnxruntime_onnx", "tensorflow": "tensorflow_savedmodel"}
PIXEL_TYPES = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}
OUTPUT = "probabilities"


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pocketcnn")
    except PackageNotFoundError:
        return "0"


def model_metadata(named: NamedModel, model: ServedModel) -> dict:
    shape = [-1, model.height, model.width, model.channels]
    return {
        "name": named.name, "versions": [str(v) for v in sorted(named.loaded)],
        "platform": PLATFORMS.get(model.manifest["artifacts"][model.format].get("runtime"), model.format),
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                   {"name": "pixels", "datatype": "UINT8", "shape": shape}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(model.labels)]}],
    }


# --- reading a request ----------------------------------------------------------------------------------

def read_request(max_bytes: int) -> tuple[dict, memoryview]:
    """The JSON header and the binary part of an inference request (empty without the binary extension)."""
    raw = request.get_data(cache=False)
    length_text = request.headers.get(HEADER_LENGTH)
    if length_text is None:
        header, binary = raw, b""
    else:
        if not length_text.strip().isdigit() or int(length_text) > len(raw):
            raise ApiError(400, "invalid_header_length", f"{HEADER_LENGTH} must be the length of the JSON header "
                                                         f"(at most the body's {len(raw)} bytes), not {length_text!r}.")
        header, binary = raw[:int(length_text)], raw[int(length_text):]
    try:
        document = json.loads(header)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        raise ApiError(400, "invalid_json", "The inference request must be a JSON object: "
                                            '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], ...}]}'
                                            + (f" followed by the binary tensors ({HEADER_LENGTH} gives the JSON's "
                                               "length)." if length_text is None else "."))
    return document, memoryview(binary)


def tensor_shape(tensor: dict, where: str) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ApiError(400, "invalid_shape", f"{where}: 'shape' must be a list of non-negative whole numbers.")
    return shape


def flatten(data, where: str) -> list:
    """V2 tensor data may be flat or nested in the tensor's shape: row-major order either way."""
    if not isinstance(data, list):
        raise ApiError(400, "invalid_data", f"{where}: 'data' must be a list.")
    flat, stack = [], [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 8:
                    raise ApiError(400, "invalid_data", f"{where}: 'data' is nested deeper than a tensor of this "
                                                        "model can be.")
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def binary_part(tensor: dict, binary: memoryview, offset: int, where: str) -> tuple[memoryview | None, int]:
    """This input's bytes in the binary part (None when it is in JSON), and the offset of the next one."""
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, "invalid_parameters", f"{where}: 'parameters' must be an object.")
    size = parameters.get("binary_data_size")
    if size is None:
        return None, offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
        raise ApiError(400, "invalid_binary_data", f"{where}: binary_data_size {size!r} does not fit in the "
                                                   f"{len(binary) - offset} binary bytes left after the JSON header.")
    if "data" in tensor:
        raise ApiError(400, "invalid_binary_data", f"{where}: send 'data' or binary_data_size, not both.")
    return binary[offset:offset + size], offset + size


def bytes_elements(part: memoryview, where: str) -> list[bytes]:
    """A BYTES tensor in the binary extension: each element's length (4 bytes, little-endian), then its bytes."""
    elements, offset = [], 0
    while offset < len(part):
        if offset + 4 > len(part):
            raise ApiError(400, "invalid_binary_data", f"{where}: the binary data ends inside an element's length.")
        (length,) = struct.unpack_from("<I", part, offset)
        if offset + 4 + length > len(part):
            raise ApiError(400, "invalid_binary_data", f"{where}: an element of {length} bytes runs past the end of "
                                                       "its binary data.")
        elements.append(bytes(part[offset + 4:offset + 4 + length]))
        offset += 4 + length
    return elements


def image_input(tensor: dict, part: memoryview | None, where: str) -> list[bytes]:
    if tensor.get("datatype") != "BYTES":
        raise ApiError(400, "invalid_datatype", f"{where}: 'image' is a BYTES tensor (encoded photos), not "
                                                f"{tensor.get('datatype')!r}.")
    shape = tensor_shape(tensor, where)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise ApiError(400, "invalid_shape", f"{where}: 'image' has shape [N] or [N, 1] (N photos), not {shape}.")
    if part is not None:
        photos = bytes_elements(part, where)
    else:
        if "data" not in tensor:
            raise ApiError(400, "invalid_data", f"{where}: no 'data' and no binary_data_size.")
        parameters = tensor.get("parameters") or {}
        if parameters.get("content_type") != "base64":
            raise ApiError(400, "invalid_data", f"{where}: photos in JSON must be base64 strings marked "
                                                '"parameters": {"content_type": "base64"} (raw image bytes are no '
                                                "JSON string), or use the binary tensor extension.")
        photos = []
        for index, item in enumerate(flatten(tensor["data"], where)):
            try:
                if not isinstance(item, str):
                    raise ValueError
                try:  # well-formed, checked in C (2.5 times faster on a large photo); else line breaks allowed
                    photos.append(binascii.a2b_base64(item, strict_mode=True))
                except ValueError:
                    photos.append(base64.b64decode("".join(item.split()), validate=True))
            except (ValueError, binascii.Error):
                raise ApiError(400, "invalid_base64", f"{where}: element {index} is not a base64 string.") from None
    if len(photos) != math.prod(shape):
        raise ApiError(400, "invalid_shape", f"{where}: shape {shape} holds {math.prod(shape)} elements, the data "
                                             f"{len(photos)}.")
    return photos


def pixels_input(tensor: dict, part: memoryview | None, model: ServedModel, where: str) -> np.ndarray:
    datatype = tensor.get("datatype")
    if datatype not in PIXEL_TYPES:
        raise ApiError(400, "invalid_datatype", f"{where}: 'pixels' is UINT8 or FP32, not {datatype!r}.")
    shape = tensor_shape(tensor, where)
    expected = [model.height, model.width, model.channels]
    if len(shape) != 4 or shape[1:] != expected:
        raise ApiError(400, "invalid_shape", f"{where}: 'pixels' has shape [N, {', '.join(map(str, expected))}], "
                                             f"not {shape}.")
    count = math.prod(shape)
    if part is not None:
        dtype = PIXEL_TYPES[datatype]
        if len(part) != count * dtype.itemsize:
            raise ApiError(400, "invalid_binary_data", f"{where}: shape {shape} of {datatype} is "
                                                       f"{count * dtype.itemsize} bytes, the binary data {len(part)}.")
        array = np.frombuffer(part, dtype=dtype).reshape(shape)
    else:
        if "data" not in tensor:
            raise ApiError(400, "invalid_data", f"{where}: no 'data' and no binary_data_size.")
        flat = flatten(tensor["data"], where)
        if len(flat) != count:
            raise ApiError(400, "invalid_shape", f"{where}: shape {shape} holds {count} values, the data {len(flat)}.")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
            raise ApiError(400, "invalid_data", f"{where}: pixel values must be numbers.")
        array = np.asarray(flat, dtype=np.float64).reshape(shape)
        if datatype == "UINT8" and not np.array_equal(array, np.round(array)):
            raise ApiError(400, "invalid_data", f"{where}: UINT8 values must be whole numbers.")
    if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 255):
        raise ApiError(400, "invalid_data", f"{where}: pixel values must be between 0 and 255.")
    return array.astype(np.uint8) if datatype == "UINT8" else array.astype(np.float32)


def requested_outputs(document: dict, classes: int) -> list[tuple[bool, int | None]]:
    """(binary, classification count) for the output; every output (there is one) when none is named."""
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, "invalid_parameters", "'parameters' must be an object.")
    default_binary = parameters.get("binary_data_output") is True
    outputs = document.get("outputs")
    if outputs is None:
        return [(default_binary, None)]
    if not isinstance(outputs, list) or not outputs:
        raise ApiError(400, "invalid_outputs", "'outputs' must be a non-empty list of {\"name\": ...} objects.")
    found = []
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or output.get("name") != OUTPUT:
            name = output.get("name") if isinstance(output, dict) else None
            raise ApiError(400, "unknown_output", f"outputs[{index}]: unknown output {name!r}; the model has "
                                                  f"'{OUTPUT}'.")
        options = output.get("parameters") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "invalid_parameters", f"outputs[{index}]: 'parameters' must be an object.")
        count = options.get("classification")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= classes):
            raise ApiError(400, "invalid_classification", f"outputs[{index}]: classification must be a whole number "
                                                          f"from 1 to {classes}, not {count!r}.")
        binary = options.get("binary_data", default_binary)
        found.append((binary is True, count))
    return found


# --- writing an answer ----------------------------------------------------------------------------------

def classification(probabilities: np.ndarray, labels: list[str], count: int) -> list[list[str]]:
    """Triton's classification extension: the `count` most likely classes as "score:index:label"."""
    rows = []
    for row in probabilities:
        order = sorted(range(len(row)), key=lambda i: -float(row[i]))[:count]
        rows.append([f"{float(row[i]):f}:{i}:{labels[i]}" for i in order])
    return rows


def encode_bytes(strings: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(data)) + data for data in (s.encode("utf-8") for s in strings))


def inference_response(model: ServedModel, name: str, request_id, probabilities: np.ndarray,
                       outputs: list[tuple[bool, int | None]]) -> Response:
    tensors, blobs = [], []
    for binary, count in outputs:
        if count is None:
            tensor = {"name": OUTPUT, "datatype": "FP32", "shape": list(probabilities.shape)}
            if binary:
                blob = probabilities.astype("<f4").tobytes()
            else:
                tensor["data"] = [float(v) for v in probabilities.reshape(-1)]
        else:
            rows = classification(probabilities, model.labels, count)
            tensor = {"name": OUTPUT, "datatype": "BYTES", "shape": [len(rows), count]}
            if binary:
                blob = encode_bytes([s for row in rows for s in row])
            else:
                tensor["data"] = [s for row in rows for s in row]
        if binary:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        tensors.append(tensor)
    body = {"model_name": name, "model_version": str(model.version)}
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = tensors
    header = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return Response(header, mimetype="application/json")
    response = Response(header + b"".join(blobs), mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(header))
    return response


def blueprint(service) -> Blueprint:
    routes = Blueprint("inference_v2", __name__)
    manager, metrics, settings = service.manager, service.metrics, service.settings

    def named(name: str) -> NamedModel:
        return manager.model(name)

    def served(name: str, version: str | None) -> tuple[NamedModel, ServedModel]:
        model = named(name)
        if version is None:
            return model, model.version()
        if not version.isdigit() or len(version) > 18:
            raise ModelNotFound(f"Version {version!r} of '{name}' is not served (versions are whole numbers)")
        return model, model.version(int(version))

    @routes.get("/v2")
    def server_metadata():
        return json_response({"name": "pocketcnn", "version": server_version(), "extensions": EXTENSIONS})

    @routes.get("/v2/health/live")
    def live():
        return json_response({"live": True})

    @routes.get("/v2/health/ready")
    def ready():
        ok, reason = manager.all_ready()
        if not ok:
            return json_response({"ready": False, "error": f"Not ready: {reason}"}, 503)
        return json_response({"ready": True})

    @routes.get("/v2/models/<name>")
    @routes.get("/v2/models/<name>/versions/<version>")
    def metadata(name: str, version: str | None = None):
        model, version_model = served(name, version)
        return json_response(model_metadata(model, version_model))

    @routes.get("/v2/models/<name>/ready")
    @routes.get("/v2/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str | None = None):
        served(name, version)  # 404 for an unknown model or version, 503 (NotReady) for one not served
        return json_response({"name": name, "ready": True})

    @routes.post("/v2/models/<name>/infer")
    @routes.post("/v2/models/<name>/versions/<version>/infer")
    def infer(name: str, version: str | None = None):
        _, model = served(name, version)
        document, binary = read_request(settings.max_content_length)
        inputs = document.get("inputs")
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
            raise ApiError(400, "invalid_inputs", "'inputs' must be a non-empty list of tensors: 'image' (BYTES, "
                                                  "encoded photos) or 'pixels' (UINT8 or FP32).")
        request_id = document.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise ApiError(400, "invalid_id", "'id' must be a string.")
        outputs = requested_outputs(document, len(model.labels))
        offset, found = 0, {}
        for index, tensor in enumerate(inputs):
            where = f"inputs[{index}]"
            part, offset = binary_part(tensor, binary, offset, where)
            input_name = tensor.get("name")
            if input_name not in ("image", "pixels"):
                raise ApiError(400, "unknown_input", f"{where}: unknown input {input_name!r}; the model takes 'image' "
                                                     "(BYTES, encoded photos) or 'pixels' (UINT8 or FP32).")
            if found:
                raise ApiError(400, "invalid_inputs", "Send exactly one input, 'image' or 'pixels'.")
            found[input_name] = (tensor, part, where)
        if offset != len(binary):
            raise ApiError(400, "invalid_binary_data", f"{len(binary) - offset} bytes after the JSON header belong to "
                                                       "no input (binary_data_size).")
        (input_name, (tensor, part, where)), = found.items()
        if input_name == "image":
            photos = image_input(tensor, part, where)
            count = len(photos)
        else:
            pixels = pixels_input(tensor, part, model, where)
            count = len(pixels)
        if count == 0:
            raise ApiError(400, "invalid_shape", f"{where}: the batch is empty.")
        if count > settings.max_images:
            raise ApiError(413, "too_many_images", f"{count} images in one request; the limit is "
                                                   f"{settings.max_images}.")
        if input_name == "image":
            pixels = np.empty((count, model.height, model.width, model.channels), dtype=np.uint8)
            for index, photo in enumerate(photos):
                try:
                    pixels[index] = model.decode(photo, settings.max_pixels)
                except ImageError as err:
                    raise ApiError(err.status, err.code, f"Cannot use {where} element {index}: {err}") from None
        probabilities = model.predict(pixels)
        metrics.images.inc(count)
        return inference_response(model, name, request_id, probabilities, outputs)

    return routes
