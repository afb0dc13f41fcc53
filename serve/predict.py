"""POST /predict[?model=<name>]: photos in, a percentage for every class out (the default model, or the one
named)."""

from __future__ import annotations

import math
import time

import numpy as np
from flask import Blueprint, request

from contract import ImageError
from serve.inputs import ApiError, Upload, parse_top_k, read_uploads
from serve.model import ServedModel
from serve.responses import json_response


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


def decode_uploads(uploads: list[Upload], model: ServedModel, max_pixels: int) -> tuple[np.ndarray, list[float]]:
    """The uploads as the model's inputs, and each photo's doubt (what the input recipe measured)."""
    pixels = np.empty((len(uploads), model.height, model.width, model.channels), dtype=np.uint8)
    doubt = []
    for index, upload in enumerate(uploads):
        notes: dict = {}
        try:
            pixels[index] = model.decode(upload.data, max_pixels, notes)
            doubt.append(notes.get("photo_doubt", 0.0))
        except ImageError as err:
            which = (f"'{upload.filename}'" if upload.filename
                     else (f"image {index + 1}" if len(uploads) > 1 else "the image"))
            raise ApiError(err.status, err.code, f"Cannot use {which}: {err}") from None
    return pixels, doubt


def answer(probabilities, score, labels: list[str], top_k: int | None) -> dict:
    """One image's answer: every class ranked, and whether it looks like anything the model was trained on
    (null for a model exported without a detector)."""
    return {"predictions": rank(probabilities, labels, top_k),
            "out_of_distribution": None if score is None else bool(score > 1.0),
            "ood_score": None if score is None else round(float(score), 4)}


def blueprint(service) -> Blueprint:
    routes = Blueprint("predict", __name__)
    manager, metrics = service.manager, service.metrics
    max_pixels, max_images = service.settings.max_pixels, service.settings.max_images

    @routes.post("/predict")
    def predict():
        started = time.perf_counter()
        # One reference for the whole request, even if a new version arrives meanwhile. ?model=<name>: another model
        # of the repository than the default one.
        name = request.args.get("model") if request.environ.get("QUERY_STRING") else None
        model = manager.served(name)
        uploads, batch, raw_top_k = read_uploads(request, max_images)
        top_k = parse_top_k(raw_top_k, len(model.labels))
        pixels, doubt = decode_uploads(uploads, model, max_pixels)
        decoded = time.perf_counter()
        probabilities, scores = model.classify(pixels, doubt)
        inferred = time.perf_counter()
        metrics.decode_ms.observe((decoded - started) * 1000 / len(uploads))
        metrics.inference_ms.observe((inferred - decoded) * 1000)
        metrics.images.inc(len(uploads))
        timing = {"decode": round((decoded - started) * 1000, 3), "inference": round((inferred - decoded) * 1000, 3)}
        scores = [None] * len(uploads) if scores is None else scores
        if batch:
            results = [{"filename": u.filename, **answer(p, s, model.labels, top_k)}
                       for u, p, s in zip(uploads, probabilities, scores, strict=True)]
            body = {"model": model.describe(), "results": results}
        else:
            body = {"model": model.describe(), **answer(probabilities[0], scores[0], model.labels, top_k)}
        timing["total"] = round((time.perf_counter() - started) * 1000, 3)
        body["timing_ms"] = timing
        return json_response(body)

    return routes
