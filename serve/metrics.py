"""Prometheus metrics. Under gunicorn every worker writes to PROMETHEUS_MULTIPROC_DIR (set by
serve/gunicorn_conf.py before any worker starts), and /metrics adds them up across workers; without
it (Flask's test client, a single process) the app's own registry is reported."""

from __future__ import annotations

import os
import time

from flask import Flask, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401 - re-exported for the app
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"))
# Milliseconds: decode of a thumbnail is ~0.1 ms, a 12 MP photo ~100 ms.
MS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pocketcnn_requests_total", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.request_ms = Histogram("pocketcnn_request_duration_ms", "Whole request handling time (ms)",
                                    ["endpoint"], buckets=MS_BUCKETS, registry=r)
        self.decode_ms = Histogram("pocketcnn_decode_duration_ms", "Image decode and resize time per image (ms)",
                                   buckets=MS_BUCKETS, registry=r)
        self.inference_ms = Histogram("pocketcnn_inference_duration_ms", "Model inference time per request (ms)",
                                      buckets=MS_BUCKETS, registry=r)
        self.images = Counter("pocketcnn_images_total", "Images classified", registry=r)
        self.model_info = Gauge("pocketcnn_model_info", "The served model version (value 1)",
                                ["name", "version", "format"], registry=r, multiprocess_mode="livemax")
        self.ready = Gauge("pocketcnn_ready", "1 when a model is loaded and passed its self-check",
                           registry=r, multiprocess_mode="livemin")
        self.load_failures = Counter("pocketcnn_model_load_failures_total",
                                     "Versions refused (load error or failed self-check)", ["name", "version"],
                                     registry=r)
        self.model_swaps = Counter("pocketcnn_model_swaps_total", "Times a new version replaced the served one",
                                   registry=r)

        self._request_children: dict = {}  # (endpoint, method, status) -> (counter child): labels() takes a lock
        self._duration_children: dict = {}

    def count_request(self, endpoint: str, method: str, status: int) -> None:
        if method not in HTTP_METHODS:
            method = "other"  # any token is a method to HTTP: do not let clients mint label values
        key = (endpoint, method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(endpoint, method, str(status))
        child.inc()

    def observe_request_ms(self, endpoint: str, milliseconds: float) -> None:
        child = self._duration_children.get(endpoint)
        if child is None:
            child = self._duration_children[endpoint] = self.request_ms.labels(endpoint)
        child.observe(milliseconds)

    def install(self, app: Flask) -> None:
        """Count every request by endpoint, method and status, and time it (from before any other hook)."""

        @app.before_request
        def start_timer():
            request.environ["pocketcnn.started"] = time.perf_counter()

        @app.after_request
        def record(response):
            rule = request.url_rule
            endpoint = rule.rule if rule is not None else "unmatched"
            self.count_request(endpoint, request.method, response.status_code)
            started = request.environ.get("pocketcnn.started")
            if started is not None:
                self.observe_request_ms(endpoint, (time.perf_counter() - started) * 1000)
            return response

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined)
            return generate_latest(combined)
        return generate_latest(self.registry)

    def model_event(self, kind: str, name: str, version: int, previous=None, reason: str = "", fmt: str = "") -> None:
        if kind == "loaded":
            if previous is not None:
                self.model_swaps.inc()
            self.model_info.labels(name, str(version), fmt).set(1)
            self.ready.set(1)
        elif kind == "unloaded":
            try:
                self.model_info.remove(name, str(version), fmt)
            except KeyError:
                pass
        elif kind == "load_failed":
            self.load_failures.labels(name, str(version)).inc()
