"""What the page needs to classify on the device (the photo never leaves the phone): the served version's
ONNX file, a description of it (labels, input recipe, out-of-distribution detector and scale), and the web
runtime (onnxruntime-web's JavaScript and WebAssembly, from npm, locked by web/package-lock.json), all from
this service: no CDN. A service installed without it (no Node.js: `make web` was not run, or the container)
answers model.json with `"available": false` and the reason, and the page says it and classifies here.

  GET /ondevice/model.json        the served version's ONNX file: where, sha256, labels, recipe, detector
  GET /ondevice/model.onnx        the file itself (ETag: its sha256)
  GET /ondevice/ood.bin           its out-of-distribution detector's arrays (float32, shapes in model.json)
  GET /ondevice/runtime/<file>    onnxruntime-web's files (the three the WASM backend loads)
  GET /ondevice/<name>.mjs        the page's modules: the runtime glue and the input recipes in JavaScript
  GET /sw.js                      the service worker that keeps all of it for offline use
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
from flask import Blueprint, Response, request, send_file, send_from_directory

from contract.files import tree_sha256
from contract.ood import load as load_detector
from serve.responses import json_response

STATIC = Path(__file__).parent / "static"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUNTIME_DIR = ROOT / "web" / "node_modules" / "onnxruntime-web" / "dist"
ON_DEVICE_FORMAT = "onnx"  # onnxruntime-web runs the ONNX file as exported, features output included
# The files the WASM backend loads (single-threaded SIMD build; threads would need cross-origin isolation).
RUNTIME_FILES = {"ort.wasm.min.mjs": "text/javascript", "ort-wasm-simd-threaded.mjs": "text/javascript",
                 "ort-wasm-simd-threaded.wasm": "application/wasm"}
MODULES = ("device.mjs", "recipes.mjs")
# The detector's arrays, float32 little-endian one after the other in ood.bin (model.json gives their shapes).
DETECTOR_ARRAYS = ("class_means", "class_factor", "global_mean", "global_factor")


def runtime_dir(settings) -> Path:
    return Path(settings.web_runtime) if settings.web_runtime else DEFAULT_RUNTIME_DIR


def runtime_version(folder: Path) -> str | None:
    """onnxruntime-web's version from its package.json (None when it is not installed)."""
    import json

    package = folder.parent / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def blueprint(service) -> Blueprint:
    routes = Blueprint("in_browser", __name__)
    manager, settings = service.manager, service.settings
    folder = runtime_dir(settings)
    cache: dict = {}
    lock = threading.Lock()

    def described(model) -> dict:
        """model.json for a served version, computed once per version (the sha256 reads the file)."""
        key = (model.name, model.version, str(model.path))
        with lock:
            if key not in cache:
                cache.clear()
                cache[key] = describe(model, folder)
            return cache[key]

    @routes.get("/ondevice/model.json")
    def model_json():
        model = manager.current
        if model is None:
            return json_response({"available": False, "reason": "no model is served yet; try again in a moment"},
                                 503)
        document = described(model)
        return json_response({k: v for k, v in document.items() if not k.startswith("_")})

    @routes.get("/ondevice/model.onnx")
    def model_file():
        model = manager.current
        document = described(model) if model is not None else {}
        if not document.get("available"):
            return json_response({"error": {"code": "not_available", "message": document.get(
                "reason", "no model is served yet")}}, 404)
        response = send_file(document["_path"], mimetype="application/octet-stream", etag=document["sha256"],
                             max_age=0, conditional=True)
        response.headers["Cache-Control"] = "no-cache"  # a new version may replace it: revalidate (ETag)
        return response

    @routes.get("/ondevice/ood.bin")
    def detector_file():
        model = manager.current
        document = described(model) if model is not None else {}
        if "_detector" not in document:
            return json_response({"error": {"code": "not_available", "message": "the served version has no "
                                            "out-of-distribution detector"}}, 404)
        response = Response(document["_detector"], mimetype="application/octet-stream")
        response.set_etag(document["ood"]["sha256"])
        response.headers["Cache-Control"] = "no-cache"
        return response.make_conditional(request)

    @routes.get("/ondevice/runtime/<name>")
    def runtime(name: str):
        if name not in RUNTIME_FILES or not (folder / name).is_file():
            return json_response({"error": {"code": "not_found", "message": (
                f"{name} is not part of the web runtime" if name not in RUNTIME_FILES else
                "the web runtime is not installed on this service (make web)")}}, 404)
        return send_from_directory(folder, name, mimetype=RUNTIME_FILES[name], max_age=86400)

    @routes.get("/ondevice/<name>")
    def module(name: str):
        if name not in MODULES:
            return json_response({"error": {"code": "not_found", "message": f"no page module {name}"}}, 404)
        return send_from_directory(STATIC, name, mimetype="text/javascript", max_age=0)

    @routes.get("/sw.js")
    def service_worker():
        response = send_from_directory(STATIC, "sw.js", mimetype="text/javascript", max_age=0)
        response.headers["Service-Worker-Allowed"] = request.script_root + "/" if request.script_root else "/"
        return response

    return routes


def describe(model, folder: Path) -> dict:
    """Whether the page can classify on the device with the served version, and everything it needs to."""
    version = runtime_version(folder)
    base = {"name": model.name, "version": model.version, "served_format": model.format}
    if version is None or not all((folder / name).is_file() for name in RUNTIME_FILES):
        return {**base, "available": False,
                "reason": "this service was installed without the in-browser runtime (onnxruntime-web: make web, "
                          "which needs Node.js)"}
    artifact = model.manifest.get("artifacts", {}).get(ON_DEVICE_FORMAT)
    if artifact is None:
        return {**base, "available": False,
                "reason": f"version {model.version} was exported without an ONNX file, which the page runs"}
    path = model.path / artifact["file"]
    if not path.resolve().is_relative_to(model.path.resolve()) or not path.is_file() or \
            tree_sha256(path) != artifact.get("sha256"):
        return {**base, "available": False,
                "reason": f"version {model.version}'s ONNX file is missing or does not match its manifest"}
    height, width, channels = (int(v) for v in model.manifest["input"]["shape"][1:])
    document = {
        **base, "available": True, "format": ON_DEVICE_FORMAT, "runtime": {"name": "onnxruntime-web",
                                                                          "version": version},
        "model_url": "ondevice/model.onnx", "sha256": artifact["sha256"], "bytes": path.stat().st_size,
        "labels": list(model.labels), "input": {"height": height, "width": width, "channels": channels,
                                                "name": artifact["input"].get("name", "image"),
                                                "recipe": model.recipe.as_manifest()},
        "tolerance": artifact.get("gates", {}).get("max_abs_diff"), "ood": None, "_path": path,
    }
    entry = artifact.get("ood")
    if entry:
        detector_path = model.path / entry["detector"]
        if detector_path.is_file() and tree_sha256(detector_path) == entry.get("sha256"):
            detector = load_detector(detector_path)
            arrays = [np.asarray(getattr(detector, name), dtype="<f4") for name in DETECTOR_ARRAYS]
            document["_detector"] = b"".join(array.tobytes() for array in arrays)
            document["ood"] = {
                "center": entry["center"], "threshold": entry["threshold"],
                "uses_photo_doubt": model.recipe.name == "product_photo", "url": "ondevice/ood.bin",
                "sha256": hashlib.sha256(document["_detector"]).hexdigest(),
                "arrays": [{"name": name, "shape": list(array.shape)} for name, array in zip(DETECTOR_ARRAYS, arrays,
                                                                                             strict=True)]}
    return document

