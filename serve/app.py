"""The Flask application: create_app() builds it; gunicorn runs it ('serve:create_app()').

Settings come from serve/settings.py: defaults, then environment variables prefixed POCKETCNN_ (e.g.
POCKETCNN_MODEL_REPOSITORY=/models), then `test_config`. Nothing happens at import time; the model is
loaded by a background thread started here, i.e. after gunicorn forked the worker (LiteRT and ONNX
Runtime sessions are not fork-safe).

Each API is a blueprint of its own: /predict (serve/predict.py), TensorFlow Serving's REST API
(serve/tfserving.py), the Open Inference Protocol, KServe V2 (serve/inference_v2.py), operations
(serve/operations.py: health, readiness, model, metrics, OpenAPI, the page), what the page needs to classify on
the device (serve/in_browser.py). serve/body_limit.py answers oversized bodies with a 413 before anything reads
them. Every model of the repository is served by name (serve/model.py); /predict answers with the default one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, request
from werkzeug.exceptions import HTTPException

from serve import body_limit, in_browser, inference_v2, operations, predict, tfserving
from serve.inputs import ApiError
from serve.metrics import Metrics
from serve.model import ModelManager, ModelNotFound, NotReady, UnknownLabel
from serve.responses import json_response, sentence
from serve.settings import Settings

log = logging.getLogger("pocketcnn.serve")


@dataclass(frozen=True)
class Service:
    """What every blueprint works with: the settings, the served model and the metrics."""

    settings: Settings
    manager: ModelManager
    metrics: Metrics


def create_app(test_config: dict | None = None) -> Flask:
    settings = Settings.from_env(overrides=test_config)
    app = Flask(__name__, static_folder=None)
    app.url_map.merge_slashes = False  # '//' in a path is a 404 like any unknown path, not an HTML redirect
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length  # Flask answers 413 beyond

    metrics = Metrics()
    manager = ModelManager(
        Path(settings.model_repository), settings.model_name, settings.model_version_policy, settings.model_format,
        poll_seconds=settings.poll_seconds, self_check_runs=settings.self_check_runs,
        threads=settings.inference_threads, on_event=metrics.model_event,
    )
    service = Service(settings, manager, metrics)
    app.extensions["pocketcnn"] = manager
    app.extensions["pocketcnn_metrics"] = metrics
    app.extensions["pocketcnn_settings"] = settings
    metrics.install(app)  # first: its clock starts before any other hook runs
    body_limit.install(app, settings.max_content_length)
    app.register_blueprint(predict.blueprint(service))
    app.register_blueprint(tfserving.blueprint(service))
    app.register_blueprint(inference_v2.blueprint(service))
    app.register_blueprint(operations.blueprint(service))
    app.register_blueprint(in_browser.blueprint(service))
    register_error_handlers(app, settings)
    if settings.load_in_background:
        manager.start()
        # gunicorn starts a worker's accept loop when create_app() returns. A worker that took requests before
        # its model loaded would answer them 503 (a replacement for a killed worker did, for ~0.1 s), so give
        # the first attempt a bounded wait; a slower load carries on in the background.
        manager.wait_first_attempt(settings.first_load_wait_seconds)
    else:
        manager.refresh()
        if manager.poll_seconds > 0:
            manager.start()
    return app


def protocol_of(path: str) -> str:
    """Whose error format a path answers in: TF Serving's and the V2 protocol's `{"error": "<string>"}` on their
    routes, pocketcnn's `{"error": {"code", "message"}}` everywhere else."""
    if path == "/v1" or path.startswith("/v1/"):
        return "tfserving"
    if path == "/v2" or path.startswith("/v2/"):
        return "v2"
    return "pocketcnn"


def error_response(status: int, code: str, message: str):
    if protocol_of(request.path) == "pocketcnn":
        return json_response({"error": {"code": code, "message": message}}, status)
    return json_response({"error": message}, status)


def register_error_handlers(app: Flask, settings: Settings) -> None:
    @app.errorhandler(ApiError)
    def api_error(err: ApiError):
        return error_response(err.status, err.code, err.message)

    @app.errorhandler(NotReady)
    def not_ready(err: NotReady):
        return error_response(503, "not_ready", f"The model is not ready: {sentence(str(err))}")

    @app.errorhandler(ModelNotFound)
    def model_not_found(err: ModelNotFound):
        return error_response(404, "model_not_found", sentence(str(err)))

    @app.errorhandler(UnknownLabel)
    def unknown_label(err: UnknownLabel):
        return error_response(400, "unknown_label", sentence(str(err)))

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        messages = {
            404: f"No such endpoint: {request.path}. The API is described at /openapi.json.",
            405: f"{request.method} is not allowed on {request.path}"
                 + (f"; use {', '.join(sorted(m for m in (err.valid_methods or []) if m not in ('HEAD', 'OPTIONS')))}."
                    if getattr(err, "valid_methods", None) else "."),
            413: f"The request is larger than the limit of {settings.max_content_length:,} bytes. "
                 "Send a smaller photo.",
        }
        code = (err.name or "error").lower().replace(" ", "_").replace("'", "")
        response = error_response(err.code or 500, code, messages.get(err.code, err.description))
        if err.code == 405 and getattr(err, "valid_methods", None):
            response.headers["Allow"] = ", ".join(err.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "The server failed to handle this request; it was logged.")
