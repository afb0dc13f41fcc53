"""TensorFlow Serving's REST API, so clients written for it work unchanged.

    POST /v1/models/<name>[/versions/<v>|/labels/<label>]:predict    {"instances": [...]} -> {"predictions": [...]}
    POST /v1/models/<name>[/versions/<v>|/labels/<label>]:classify   {"examples": [...]} -> {"results": [...]}
    GET  /v1/models/<name>[/versions/<v>|/labels/<label>]            every version's status
    GET  /v1/models/<name>[/versions/<v>|/labels/<label>]/metadata   the signatures

As TF Serving's source writes them (tensorflow_serving/model_servers/http_rest_api_handler.cc and
http_rest_api_util.cc, util/json_tensor.cc): errors are {"error": "<message>"}; :classify answers under "results"
(its REST documentation says "result"); the metadata is the SignatureDefMap printed with every primitive field
(dims as {"size": "-1", "name": ""}, "unknown_rank", "defaults"). Version labels come from
models/<name>/serving.json (serve/model.py). An unknown label is a 400, as in TF Serving ("Unrecognized servable
version label").
"""

from __future__ import annotations

import numpy as np
from flask import Blueprint, request
from werkzeug.routing import BaseConverter

from contract import ImageError
from serve.inputs import ApiError, decode_base64, json_body
from serve.model import NamedModel, ServedModel
from serve.responses import json_response


class PathSegmentWithoutColon(BaseConverter):
    """A URL segment without ':'. Model names never hold one, and with it GET /v1/models/<name> would also
    match /v1/models/x:predict, so a GET there would be "model not found" instead of 405 (use POST), and
    OPTIONS would advertise GET."""

    regex = "[^/:]+"


def instance_pixels(item, index: int, model: ServedModel, max_pixels: int) -> np.ndarray:
    """One TF Serving instance -> (H, W, C) pixels: {"b64": ...} is an image file, a nested list is pixels."""
    if isinstance(item, dict) and "image" in item and "b64" not in item:
        item = item["image"]  # named-input row form: {"image": ...}
    if isinstance(item, dict) and "b64" in item:
        data = decode_base64(item, f"instances[{index}].b64")
        try:
            return model.decode(data, max_pixels)
        except ImageError as err:
            raise ApiError(err.status, err.code, f"Cannot use instances[{index}]: {err}") from None
    if isinstance(item, list):
        try:
            array = np.asarray(item, dtype=np.float32)
        except (ValueError, TypeError):
            array = None
        expected = (model.height, model.width, model.channels)
        if array is not None and model.channels == 1 and array.shape == expected[:2]:
            array = array[..., np.newaxis]
        if array is None or array.shape != expected:
            raise ApiError(400, "invalid_instance", f"instances[{index}] must be {{\"b64\": \"<image>\"}} or a "
                                                    f"{expected[0]}x{expected[1]}x{expected[2]} array of pixel values.")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise ApiError(400, "invalid_instance", f"instances[{index}]: pixel values must be between 0 and 255.")
        return array
    raise ApiError(400, "invalid_instance", f'instances[{index}] must be {{"b64": "<base64 image>"}} or a pixel array.')


SIGNATURES = {"predict": ("", "serving_default"), "classify": ("", "serving_default", "classify")}


def example_pixels(example, index: int, model: ServedModel, max_pixels: int) -> np.ndarray:
    """One :classify example's "image" feature -> (H, W, C) pixels: {"b64": ...} (alone or as a one-element list,
    as a tf.Example feature list holds it), or the pixels, nested or flat."""
    if not isinstance(example, dict) or "image" not in example:
        raise ApiError(400, "invalid_example", f'examples[{index}] must be an object with an "image" feature: '
                                               '{"image": {"b64": "<base64 image>"}}.')
    value = example["image"]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
    size = model.height * model.width * model.channels
    if isinstance(value, list) and len(value) == size and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        value = np.asarray(value, dtype=np.float32).reshape(model.height, model.width, model.channels).tolist()
    try:
        return instance_pixels(value, index, model, max_pixels)
    except ApiError as err:
        raise ApiError(err.status, err.code, err.message.replace("instances[", "examples[")) from None


def tensor_info(name: str, dtype: str, shape: list | None) -> dict:
    """A TensorInfo as TF Serving prints it (always_print_primitive_fields, preserve_proto_field_names)."""
    if shape is None:
        return {"dtype": dtype, "tensor_shape": {"dim": [], "unknown_rank": True}, "name": name}
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(-1 if d is None else d), "name": ""} for d in shape],
                                             "unknown_rank": False}, "name": name}


def signature_defs(model: ServedModel) -> dict:
    """serving_default (predict: image -> probabilities) and classify (tf.Example strings -> classes, scores)."""
    classes = len(model.labels)
    return {
        "serving_default": {
            "inputs": {"image": tensor_info("serving_default_image:0", "DT_FLOAT", model.manifest["input"]["shape"])},
            "outputs": {"probabilities": tensor_info("StatefulPartitionedCall:0", "DT_FLOAT",
                                                     model.manifest["output"]["shape"])},
            "method_name": "tensorflow/serving/predict", "defaults": {}},
        "classify": {
            "inputs": {"inputs": tensor_info("tf_example:0", "DT_STRING", None)},
            "outputs": {"classes": tensor_info("classes:0", "DT_STRING", [None, classes]),
                        "scores": tensor_info("scores:0", "DT_FLOAT", [None, classes])},
            "method_name": "tensorflow/serving/classify", "defaults": {}},
    }


def version_status(entry: dict) -> dict:
    error = entry["error"]
    return {"version": str(entry["version"]), "state": entry["state"],
            "status": {"error_code": "FAILED_PRECONDITION" if error else "OK", "error_message": error or ""}}


def blueprint(service) -> Blueprint:
    routes = Blueprint("tfserving", __name__)
    # Registered before the routes below are added to the app, so their <name> uses it.
    routes.record_once(lambda state: state.app.url_map.converters.__setitem__("default", PathSegmentWithoutColon))
    manager, metrics = service.manager, service.metrics
    max_pixels, max_images = service.settings.max_pixels, service.settings.max_images

    def served_as(name: str, version: int | None = None, label: str | None = None) -> ServedModel:
        return manager.model(name).version(version, label)

    def request_body(what: str, signatures: tuple[str, ...]) -> dict:
        body = json_body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", f"The body must be a JSON object: {what}.")
        signature = body.get("signature_name", "")
        if not isinstance(signature, str):
            raise ApiError(400, "invalid_json", "'signature_name' key must be a string value.")
        if signature not in signatures:
            raise ApiError(400, "invalid_json", f'Serving signature name: "{signature}" not found in signature def '
                                                f"(use {' or '.join(repr(s) for s in signatures if s)}).")
        return body

    def predict(name: str, version: int | None = None, label: str | None = None):
        model = served_as(name, version, label)
        body = request_body('{"instances": [{"b64": "<base64 image>"}, ...]} or pixel arrays', SIGNATURES["predict"])
        if "instances" in body and "inputs" in body:
            raise ApiError(400, "invalid_json", 'Send "instances" (row format) or "inputs" (columnar), not both.')
        instances = body.get("instances", body.get("inputs"))
        if isinstance(instances, dict):  # columnar form: {"inputs": {"image": [...]}}
            instances = instances.get("image")
        if not isinstance(instances, list) or not instances:
            raise ApiError(400, "invalid_json", '"instances" must be a non-empty list.')
        if len(instances) > max_images:
            raise ApiError(413, "too_many_images", f"{len(instances)} instances; the limit is {max_images}.")
        pixels = np.stack([instance_pixels(item, i, model, max_pixels) for i, item in enumerate(instances)])
        probabilities = model.predict(pixels)
        metrics.images.inc(len(instances))
        return json_response({"predictions": [[round(float(v), 7) for v in row] for row in probabilities]})

    def classify(name: str, version: int | None = None, label: str | None = None):
        model = served_as(name, version, label)
        body = request_body('{"examples": [{"image": {"b64": "<base64 image>"}}, ...]}', SIGNATURES["classify"])
        examples, context = body.get("examples"), body.get("context", {})
        if not isinstance(examples, list) or not examples:
            raise ApiError(400, "invalid_json", '"examples" must be a non-empty list of objects, '
                                                'e.g. [{"image": {"b64": "<base64 image>"}}].')
        if not isinstance(context, dict):
            raise ApiError(400, "invalid_json", '"context" must be an object of features shared by every example.')
        if len(examples) > max_images:
            raise ApiError(413, "too_many_images", f"{len(examples)} examples; the limit is {max_images}.")
        pixels = np.stack([example_pixels({**context, **example} if isinstance(example, dict) else example, i, model,
                                          max_pixels) for i, example in enumerate(examples)])
        probabilities = model.predict(pixels)
        metrics.images.inc(len(examples))
        # Classes in label order, as a classification signature's classes/scores tensors hold them.
        return json_response({"results": [[[label_, round(float(v), 7)] for label_, v in zip(model.labels, row,
                                                                                              strict=True)]
                                          for row in probabilities]})

    def status(name: str, version: int | None = None, label: str | None = None):
        model: NamedModel = manager.model(name)
        if label is not None:
            if label not in model.labels:
                model.version(label=label)  # raises UnknownLabel, with the labels it has
            version = model.labels[label]
        states = model.version_states()
        if version is not None:
            states = [s for s in states if s["version"] == version]
            if not states:
                raise ApiError(404, "version_not_found", f"Could not find version {version} of model '{name}'.")
        return json_response({"model_version_status": [version_status(s) for s in states]})

    def metadata(name: str, version: int | None = None, label: str | None = None):
        model = served_as(name, version, label)
        return json_response({
            "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": signature_defs(model)}},
        })

    for verb, view in (("predict", predict), ("classify", classify)):
        routes.add_url_rule(f"/v1/models/<name>:{verb}", f"tfserving_{verb}", view, methods=["POST"])
        routes.add_url_rule(f"/v1/models/<name>/versions/<int:version>:{verb}", f"tfserving_{verb}", view,
                            methods=["POST"])
        routes.add_url_rule(f"/v1/models/<name>/labels/<label>:{verb}", f"tfserving_{verb}", view, methods=["POST"])
    for suffix, endpoint, view in (("", "tfserving_status", status), ("/metadata", "tfserving_metadata", metadata)):
        routes.add_url_rule(f"/v1/models/<name>{suffix}", endpoint, view, methods=["GET"])
        routes.add_url_rule(f"/v1/models/<name>/versions/<int:version>{suffix}", endpoint, view, methods=["GET"])
        routes.add_url_rule(f"/v1/models/<name>/labels/<label>{suffix}", endpoint, view, methods=["GET"])
    return routes
