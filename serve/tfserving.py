"""TensorFlow Serving's REST API, so clients written for it work unchanged."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, request
from werkzeug.routing import BaseConverter

from contract import ImageError, is_valid_model_name
from serve.inputs import ApiError, decode_base64, json_body
from serve.model import ServedModel
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


def blueprint(service) -> Blueprint:
    routes = Blueprint("tfserving", __name__)
    # Registered before the routes below are added to the app, so their <name> uses it.
    routes.record_once(lambda state: state.app.url_map.converters.__setitem__("default", PathSegmentWithoutColon))
    manager, metrics = service.manager, service.metrics
    max_pixels, max_images = service.settings.max_pixels, service.settings.max_images

    def served_as(name: str, version: int | None = None) -> ServedModel:
        model = manager.served()
        if name != model.name:
            shown = name if is_valid_model_name(name) else "(invalid name)"
            raise ApiError(404, "model_not_found", f"Model '{shown}' is not served here; this service serves "
                                                   f"'{model.name}'.")
        if version is not None and version != model.version:
            raise ApiError(404, "version_not_found", f"Version {version} of '{name}' is not served; "
                                                     f"version {model.version} is.")
        return model

    @routes.post("/v1/models/<name>:predict")
    @routes.post("/v1/models/<name>/versions/<int:version>:predict")
    def tfserving_predict(name: str, version: int | None = None):
        model = served_as(name, version)
        body = json_body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", 'Send JSON {"instances": [{"b64": "<base64 image>"}, ...]} '
                                                "or pixel arrays.")
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

    @routes.get("/v1/models/<name>")
    @routes.get("/v1/models/<name>/versions/<int:version>")
    def tfserving_status(name: str, version: int | None = None):
        model = served_as(name, version)
        return json_response({"model_version_status": [
            {"version": str(model.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]})

    @routes.get("/v1/models/<name>/metadata")
    @routes.get("/v1/models/<name>/versions/<int:version>/metadata")
    def tfserving_metadata(name: str, version: int | None = None):
        model = served_as(name, version)

        def tensor(name_, dtype, shape):
            return {"dtype": dtype, "name": name_, "tensor_shape": {"dim": [{"size": str(-1 if d is None else d)}
                                                                            for d in shape]}}
        signature = {
            "inputs": {"image": tensor("image", "DT_FLOAT", model.manifest["input"]["shape"])},
            "outputs": {"probabilities": tensor("probabilities", "DT_FLOAT", model.manifest["output"]["shape"])},
            "method_name": "tensorflow/serving/predict",
        }
        return json_response({
            "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
            "labels": model.labels,
        })

    return routes
