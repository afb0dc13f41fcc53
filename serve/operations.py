"""Operations: liveness, readiness, the served model and its checks, Prometheus metrics, the OpenAPI
document and the web page."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from serve import draining
from serve.metrics import CONTENT_TYPE_LATEST
from serve.openapi import openapi_document
from serve.responses import json_response, sentence

STATIC = Path(__file__).parent / "static"


def blueprint(service) -> Blueprint:
    routes = Blueprint("operations", __name__)
    manager, metrics, settings = service.manager, service.metrics, service.settings

    @routes.get("/healthz")
    def healthz():
        return json_response({"status": "alive"})

    @routes.get("/readyz")
    def readyz():
        model = manager.current
        if draining.active():  # SIGTERM: out of rotation first, while requests are still served
            return json_response({"status": "draining",
                                  "error": {"code": "draining", "message": "This instance is shutting down; it "
                                                                           "finishes the requests it was sent."}}, 503)
        if model is None:
            return json_response({"status": "not_ready",
                                  "error": {"code": "not_ready", "message": sentence(manager.reason)}}, 503)
        return json_response({"status": "ready", "model": model.describe(), "self_check": model.self_check["reason"]})

    @routes.get("/model")
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

    @routes.get("/metrics")
    def prometheus():
        return Response(metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)

    @routes.get("/openapi.json")
    def openapi():
        model = manager.current
        return json_response(openapi_document(model.labels if model else None, settings.max_images,
                                              settings.max_content_length,
                                              {**model.describe(), "input": [model.height, model.width, model.channels]}
                                              if model else None))

    @routes.get("/")
    def index():
        return send_from_directory(STATIC, "index.html", max_age=0)

    return routes
