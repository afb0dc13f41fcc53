"""Operations: liveness, readiness, the served model and its checks, Prometheus metrics, the OpenAPI
document and the web page."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, request, send_from_directory

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

    def summary() -> dict:
        """Every model of the repository: its state, the versions it serves, its labels and its refused versions."""
        return {name: {"state": named.state, "reason": named.reason, "policy": str(named.policy),
                       "default_version": named.current.version if named.current else None,
                       "served_versions": sorted(named.loaded), "labels": dict(named.labels),
                       "refused_versions": {str(v): r for v, r in sorted(named.failures.items())}}
                for name, named in sorted(manager.models.items())}

    @routes.get("/readyz")
    def readyz():
        ready, reason = manager.all_ready()
        model = manager.current
        if draining.active():  # SIGTERM: out of rotation first, while requests are still served
            return json_response({"status": "draining",
                                  "error": {"code": "draining", "message": "This instance is shutting down; it "
                                                                           "finishes the requests it was sent."}}, 503)
        if not ready:
            return json_response({"status": "not_ready",
                                  "error": {"code": "not_ready", "message": sentence(reason)}}, 503)
        return json_response({"status": "ready", "model": model.describe() if model else None,
                              "self_check": model.self_check["reason"] if model else None,
                              "models": {name: info["state"] for name, info in summary().items()}})

    @routes.get("/model")
    def model_info():
        name = request.args.get("model") if request.environ.get("QUERY_STRING") else None
        if name is None:
            model, refused, reason, policy = manager.current, manager.failures, manager.reason, manager.policy
        else:
            named = manager.model(name)
            model, reason, policy = named.current, named.reason, named.policy
            refused = {f"{name}/{v}": r for v, r in sorted(named.failures.items())}
        if model is None:
            return json_response({"status": "not_ready",
                                  "error": {"code": "not_ready", "message": sentence(reason)},
                                  "refused_versions": refused, "models": summary()}, 503)
        return json_response({
            "status": "ready", "served": model.describe(), "policy": str(policy),
            "loaded_at": model.loaded_at, "self_check": model.self_check, "refused_versions": refused,
            "models": summary(), "manifest": model.manifest,
        })

    @routes.get("/metrics")
    def prometheus():
        return Response(metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)

    @routes.get("/openapi.json")
    def openapi():
        model = manager.current
        return json_response(openapi_document(model.labels if model else None, settings.max_images,
                                              settings.max_content_length,
                                              {**model.describe(), "input": [model.height, model.width, model.channels],
                                               "models": sorted(manager.models)}
                                              if model else None))

    @routes.get("/")
    def index():
        return send_from_directory(STATIC, "index.html", max_age=0)

    return routes
