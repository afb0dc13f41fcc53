"""The Flask application: create_app() builds it; gunicorn runs it ('serve:create_app()').

Settings come from defaults, then environment variables prefixed POCKETCNN_ (e.g.
POCKETCNN_MODEL_REPOSITORY=/models), then `test_config`. Nothing happens at import time; the model is
loaded by a background thread started here, i.e. after gunicorn forked the worker (LiteRT and ONNX
Runtime sessions are not fork-safe).
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
from flask import Flask, Response, request, send_from_directory
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import BaseConverter

from contract import DEFAULT_MAX_PIXELS, ImageError, decode_image, is_valid_model_name
from serve.inputs import ApiError, Upload, decode_base64, json_body, parse_top_k, read_uploads
from serve.metrics import CONTENT_TYPE_LATEST, Metrics
from serve.model import ModelManager, ServedModel, parse_policy
from serve.openapi import openapi_document

log = logging.getLogger("pocketcnn.serve")
STATIC = Path(__file__).parent / "static"
DRAIN_LIMIT_FACTOR = 4  # bodies up to 4x the limit are read away before the 413; larger ones are cut off
SERVABLE_FORMATS = ("tflite_float32", "tflite_float16", "tflite_dynamic", "tflite_int8", "tflite_qat_int8",
                    "tflite_pruned_int8", "onnx", "savedmodel")

DEFAULTS = {
    "MODEL_REPOSITORY": "models",      # the folder export publishes into
    "MODEL_NAME": "",                  # empty: the repository's only model
    "MODEL_VERSION_POLICY": "best",    # best (held-out accuracy) | latest | a version number
    # Measured here (BENCHMARKS.md): int8 weights run 3-4x faster than float32 on the CPU, and
    # dynamic-range keeps the closest answers of the fast formats (99.9 % same top class, same held-out
    # accuracy). tflite_float32 or onnx give bit-for-bit the trained model's percentages, at that cost.
    "MODEL_FORMAT": "tflite_dynamic",
    "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,  # bytes per request (Flask answers 413 beyond)
    "MAX_PIXELS": DEFAULT_MAX_PIXELS,  # per image, checked from the header before decoding
    "MAX_IMAGES": 32,                  # images per request
    "POLL_SECONDS": 5.0,               # how often to look for a better version (0: never)
    "SELF_CHECK_RUNS": 5,
    "INFERENCE_THREADS": 1,            # intra-op threads per worker: workers x this <= cores
    "LOAD_IN_BACKGROUND": True,        # False: create_app() returns after the first load attempt
    "FIRST_LOAD_WAIT_SECONDS": 20.0,   # background: wait this long for the first attempt (< gunicorn's timeout)
}


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.url_map.merge_slashes = False  # '//' in a path is a 404 like any unknown path, not an HTML redirect
    app.url_map.converters["default"] = PathSegmentWithoutColon  # for <name> in the TF Serving routes
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("POCKETCNN")
    if test_config:
        app.config.update(test_config)
    check_config(app.config)

    metrics = Metrics()
    manager = ModelManager(
        Path(app.config["MODEL_REPOSITORY"]), str(app.config["MODEL_NAME"] or ""),
        app.config["MODEL_VERSION_POLICY"], app.config["MODEL_FORMAT"],
        poll_seconds=float(app.config["POLL_SECONDS"]), self_check_runs=int(app.config["SELF_CHECK_RUNS"]),
        threads=int(app.config["INFERENCE_THREADS"]), on_event=metrics.model_event,
    )
    app.extensions["pocketcnn"] = manager
    app.extensions["pocketcnn_metrics"] = metrics
    register_routes(app, manager, metrics)
    register_error_handlers(app)
    register_request_metrics(app, metrics)
    if app.config["LOAD_IN_BACKGROUND"]:
        manager.start()
        # gunicorn starts a worker's accept loop when create_app() returns. A worker that took requests before
        # its model loaded would answer them 503 (a replacement for a killed worker did, for ~0.1 s), so give
        # the first attempt a bounded wait; a slower load carries on in the background.
        manager.wait_first_attempt(float(app.config["FIRST_LOAD_WAIT_SECONDS"]))
    else:
        manager.refresh()
        if manager.poll_seconds > 0:
            manager.start()
    return app


class PathSegmentWithoutColon(BaseConverter):
    """A URL segment without ':'. Model names never hold one, and with it GET /v1/models/<name> would also
    match /v1/models/x:predict, so a GET there would be "model not found" instead of 405 (use POST), and
    OPTIONS would advertise GET."""

    regex = "[^/:]+"


def check_config(config) -> None:
    """Refuse to start with settings that cannot work: a worker that fails here makes gunicorn exit."""
    parse_policy(config["MODEL_VERSION_POLICY"])
    if config["MODEL_FORMAT"] not in SERVABLE_FORMATS:
        raise ValueError(f"POCKETCNN_MODEL_FORMAT must be one of {', '.join(SERVABLE_FORMATS)}, "
                         f"not {config['MODEL_FORMAT']!r}")
    if config["MODEL_NAME"] and not is_valid_model_name(str(config["MODEL_NAME"])):
        raise ValueError(f"POCKETCNN_MODEL_NAME {config['MODEL_NAME']!r} is not a valid model name")
    for key in ("MAX_CONTENT_LENGTH", "MAX_PIXELS", "MAX_IMAGES", "SELF_CHECK_RUNS", "INFERENCE_THREADS"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"POCKETCNN_{key} must be a positive integer, not {config[key]!r}")


# --- prediction -----------------------------------------------------------------------------------

def rank(probabilities, labels: list[str], top_k: int | None) -> list[dict]:
    """Every class with its percentage, most likely first. Percentages have two decimals and sum to
    exactly 100 (largest-remainder rounding), so a page can show them as they are.

    Plain Python on purpose: for tens of classes it is several times faster than numpy's per-call
    overhead, and it runs on every request."""
    p = [value if value > 0.0 else 0.0 for value in map(float, probabilities)]
    total = sum(p)
    p = [value / total for value in p] if total > 0 else [1.0 / len(p)] * len(p)
    hundredths = [value * 10000.0 for value in p]
    floors = [math.floor(value) for value in hundredths]
    missing = round(10000 - sum(floors))
    if missing > 0:
        by_remainder = sorted(range(len(p)), key=lambda i: floors[i] - hundredths[i])  # stable: ties by index
        for i in by_remainder[:missing]:
            floors[i] += 1
    order = sorted(range(len(p)), key=lambda i: -p[i])[: top_k or len(p)]
    return [{"label": labels[i], "index": i, "percent": floors[i] / 100} for i in order]


def decode_uploads(uploads: list[Upload], model: ServedModel, max_pixels: int) -> np.ndarray:
    pixels = np.empty((len(uploads), model.height, model.width, model.channels), dtype=np.uint8)
    for index, upload in enumerate(uploads):
        try:
            pixels[index] = decode_image(upload.data, model.height, model.width, model.channels, max_pixels)
        except ImageError as err:
            which = f"'{upload.filename}'" if upload.filename else (f"image {index + 1}" if len(uploads) > 1 else "the image")
            raise ApiError(err.status, err.code, f"Cannot use {which}: {err}") from None
    return pixels


def sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def json_response(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


def register_routes(app: Flask, manager: ModelManager, metrics: Metrics) -> None:
    max_pixels = int(app.config["MAX_PIXELS"])
    max_images = int(app.config["MAX_IMAGES"])

    def served() -> ServedModel:
        model = manager.current
        if model is None:
            raise ApiError(503, "not_ready", f"The model is not ready: {sentence(manager.reason)}")
        return model

    @app.post("/predict")
    def predict():
        started = time.perf_counter()
        model = served()  # one reference for the whole request, even if a new version arrives meanwhile
        uploads, batch, raw_top_k = read_uploads(request, max_images)
        top_k = parse_top_k(raw_top_k, len(model.labels))
        pixels = decode_uploads(uploads, model, max_pixels)
        decoded = time.perf_counter()
        probabilities = model.predict(pixels)
        inferred = time.perf_counter()
        metrics.decode_ms.observe((decoded - started) * 1000 / len(uploads))
        metrics.inference_ms.observe((inferred - decoded) * 1000)
        metrics.images.inc(len(uploads))
        timing = {"decode": round((decoded - started) * 1000, 3), "inference": round((inferred - decoded) * 1000, 3)}
        if batch:
            results = [{"filename": u.filename, "predictions": rank(p, model.labels, top_k)}
                       for u, p in zip(uploads, probabilities)]
            body = {"model": model.describe(), "results": results}
        else:
            body = {"model": model.describe(), "predictions": rank(probabilities[0], model.labels, top_k)}
        timing["total"] = round((time.perf_counter() - started) * 1000, 3)
        body["timing_ms"] = timing
        return json_response(body)

    # --- TensorFlow Serving's REST API, so existing clients work unchanged ----------------------------
    def served_as(name: str, version: int | None = None) -> ServedModel:
        model = served()
        if name != model.name:
            shown = name if is_valid_model_name(name) else "(invalid name)"
            raise ApiError(404, "model_not_found", f"Model '{shown}' is not served here; this service serves "
                                                   f"'{model.name}'.")
        if version is not None and version != model.version:
            raise ApiError(404, "version_not_found", f"Version {version} of '{name}' is not served; "
                                                     f"version {model.version} is.")
        return model

    @app.post("/v1/models/<name>:predict")
    @app.post("/v1/models/<name>/versions/<int:version>:predict")
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

    @app.get("/v1/models/<name>")
    @app.get("/v1/models/<name>/versions/<int:version>")
    def tfserving_status(name: str, version: int | None = None):
        model = served_as(name, version)
        return json_response({"model_version_status": [
            {"version": str(model.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]})

    @app.get("/v1/models/<name>/metadata")
    @app.get("/v1/models/<name>/versions/<int:version>/metadata")
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

    # --- operations ------------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz():
        return json_response({"status": "alive"})

    @app.get("/readyz")
    def readyz():
        model = manager.current
        if model is None:
            return json_response({"status": "not_ready",
                                  "error": {"code": "not_ready", "message": sentence(manager.reason)}}, 503)
        return json_response({"status": "ready", "model": model.describe(), "self_check": model.self_check["reason"]})

    @app.get("/model")
    def model_info():
        model = manager.current
        refused = dict(manager.failures)
        if model is None:
            return json_response({"status": "not_ready",
                                  "error": {"code": "not_ready", "message": sentence(manager.reason)},
                                  "refused_versions": refused}, 503)
        return json_response({
            "status": "ready", "served": model.describe(), "policy": str(manager.policy),
            "loaded_at": model.loaded_at, "self_check": model.self_check, "refused_versions": refused,
            "manifest": model.manifest,
        })

    @app.get("/metrics")
    def prometheus():
        return Response(metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    def openapi():
        model = manager.current
        return json_response(openapi_document(model.labels if model else None, max_images,
                                              int(app.config["MAX_CONTENT_LENGTH"]),
                                              {**model.describe(), "input": [model.height, model.width, model.channels]}
                                              if model else None))

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html", max_age=0)


def instance_pixels(item, index: int, model: ServedModel, max_pixels: int) -> np.ndarray:
    """One TF Serving instance -> (H, W, C) pixels: {"b64": ...} is an image file, a nested list is pixels."""
    if isinstance(item, dict) and "image" in item and "b64" not in item:
        item = item["image"]  # named-input row form: {"image": ...}
    if isinstance(item, dict) and "b64" in item:
        data = decode_base64(item, f"instances[{index}].b64")
        try:
            return decode_image(data, model.height, model.width, model.channels, max_pixels)
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


# --- errors and request metrics ----------------------------------------------------------------------

def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(err: ApiError):
        return json_response({"error": {"code": err.code, "message": err.message}}, err.status)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        messages = {
            404: f"No such endpoint: {request.path}. The API is described at /openapi.json.",
            405: f"{request.method} is not allowed on {request.path}"
                 + (f"; use {', '.join(sorted(m for m in (err.valid_methods or []) if m not in ('HEAD', 'OPTIONS')))}."
                    if getattr(err, "valid_methods", None) else "."),
            413: f"The request is larger than the limit of {app.config['MAX_CONTENT_LENGTH']:,} bytes. Send a smaller photo.",
        }
        code = (err.name or "error").lower().replace(" ", "_").replace("'", "")
        response = json_response({"error": {"code": code, "message": messages.get(err.code, err.description)}},
                                 err.code or 500)
        if err.code == 405 and getattr(err, "valid_methods", None):
            response.headers["Allow"] = ", ".join(err.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"error": {"code": "internal_error",
                                        "message": "The server failed to handle this request; it was logged."}}, 500)


def register_request_metrics(app: Flask, metrics: Metrics) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]

    @app.before_request
    def start_timer_and_refuse_oversized_body():
        """Start the request's clock; answer 413 before reading an oversized body, but read it away first (up
        to a bound): a server that closes with the upload unread makes browsers and most HTTP libraries report
        a connection reset instead of the 413 and its message."""
        environ = request.environ
        environ["pocketcnn.started"] = time.perf_counter()
        length = request.content_length
        stream = environ.get("wsgi.input")
        if length is None and stream is not None and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            # A chunked upload states no length, and Werkzeug silently cuts it at the limit (the image
            # would then be "damaged", or worse, decode from its first 16 MB). Buffer at most one byte
            # more than the limit: over it, the answer is the 413; within it, the body is read from here.
            body = stream.read(limit + 1)
            if len(body) <= limit:
                environ["wsgi.input"] = io.BytesIO(body)
                return None
            length = limit + 1
        if length is not None and length > limit:
            remaining = min(length, DRAIN_LIMIT_FACTOR * limit)
            while stream is not None and remaining > 0:
                chunk = stream.read(min(65536, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
            raise RequestEntityTooLarge()
        return None

    @app.after_request
    def record(response: Response):
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else "unmatched"
        metrics.count_request(endpoint, request.method, response.status_code)
        started = request.environ.get("pocketcnn.started")
        if started is not None:
            metrics.observe_request_ms(endpoint, (time.perf_counter() - started) * 1000)
        return response
