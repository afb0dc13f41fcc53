"""The OpenAPI 3 description of the service, served at /openapi.json."""

from __future__ import annotations


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _pixel_array(shape: list[int] | None) -> dict:
    """A pixel-array instance: height x width x channels numbers 0-255 (a greyscale model also takes
    height x width). Only the outer length is in the schema: spelling out every nested pixel makes
    generated examples (and validators) needlessly slow; the description and the 400 say the rest."""
    if not shape:
        return {"type": "array", "description": "Pixels, height x width x channels, 0-255."}
    height, width, channels = shape
    return {"type": "array", "minItems": height, "maxItems": height, "items": {"type": "array"},
            "description": f"{height} rows of {width} pixels, each a number 0-255"
                           f"{' (or [value])' if channels == 1 else f' as [{channels} values]'}."}


def openapi_document(labels: list[str] | None, max_images: int, max_bytes: int, served: dict | None = None) -> dict:
    """`served`: the served model's {"name", "version", "input": [height, width, channels]}: examples for
    the TF Serving routes, and the exact shape of a pixel-array instance."""
    classes = len(labels) if labels else None
    top_k = {"type": "integer", "minimum": 1, **({"maximum": classes} if classes else {}),
             "description": "Return only the k most likely classes (percentages still of the whole distribution)."}
    base64_image = {"type": "string", "description": "A JPEG, PNG, WebP, GIF, BMP or TIFF file, base64-encoded "
                                                     "(a data: URL prefix is accepted)."}
    client_errors = {
        "400": _error("Missing, undecodable or empty image; malformed multipart body; bad base64; bad top_k; "
                      "bad JSON."),
        "413": _error(f"More than {max_bytes:,} bytes, more pixels than allowed, or more than {max_images} images."),
        "415": _error("Unsupported Content-Type."),
        "503": _error("No model is loaded yet (or none passed its self-check)."),
    }
    tf_errors = {
        "400": _error("Bad JSON, instance or image."),
        "404": _error("The model name or version is not the one served."),
        "413": _error("Too many bytes, pixels or instances."),
        "503": _error("No model is loaded yet."),
    }
    name_parameter = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                      "description": "The served model's name (see GET /model).",
                      **({"example": served["name"]} if served else {})}
    version_parameter = {"name": "version", "in": "path", "required": True,
                         "schema": {"type": "integer", "minimum": 0},
                         **({"example": served["version"]} if served else {})}
    json_top_k = {**top_k, "nullable": True, "description": top_k["description"] + " null: every class."}
    b64_instance = {"type": "object", "required": ["b64"], "properties": {"b64": base64_image}}
    pixels = _pixel_array(served.get("input") if served else None)
    instances = {"type": "array", "minItems": 1, "maxItems": max_images, "items": {"oneOf": [
        b64_instance,
        pixels,
        {"type": "object", "required": ["image"], "not": {"required": ["b64"]},  # named-input row form
         "properties": {"image": {"oneOf": [b64_instance, pixels]}}},
    ]}}
    tf_predict_body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TFServingRequest"}}},
    }
    tf_predict_responses = {
        "200": {"description": "Probabilities in label order, one row per instance.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TFServingResponse"}}}},
        **tf_errors,
    }
    status_responses = {
        "200": {"description": "Version status.",
                "content": {"application/json": {"schema": {"type": "object", "required": ["model_version_status"]}}}},
        "404": tf_errors["404"], "503": tf_errors["503"],
    }
    metadata_responses = {
        "200": {"description": "Signature of the served model.",
                "content": {"application/json": {"schema": {"type": "object",
                                                            "required": ["model_spec", "metadata"]}}}},
        "404": tf_errors["404"], "503": tf_errors["503"],
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "pocketcnn",
            "version": "1",
            "description": "Image classification: POST a photo, get a percentage for every class.",
        },
        "paths": {
            "/predict": {"post": {
                "summary": "Classify one or several photos",
                "parameters": [{"name": "top_k", "in": "query", "required": False, "schema": top_k}],
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {
                        "type": "object", "required": ["image"],
                        "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"},
                                                 "maxItems": max_images},
                                       "top_k": top_k}}},
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"oneOf": [
                        {"type": "object", "required": ["image"],
                         "properties": {"image": base64_image, "top_k": json_top_k}},
                        {"type": "object", "required": ["images"],
                         "properties": {"images": {"type": "array", "items": base64_image, "minItems": 1,
                                                   "maxItems": max_images},
                                        "top_k": json_top_k}},
                    ]}},
                }},
                "responses": {
                    "200": {"description": "Percentages per class, most likely first.",
                            "content": {"application/json": {"schema": {
                                "$ref": "#/components/schemas/PredictResponse"}}}},
                    **client_errors,
                },
            }},
            "/v1/models/{name}:predict": {"post": {
                "summary": "TensorFlow Serving compatible predict",
                "parameters": [name_parameter], "requestBody": tf_predict_body, "responses": tf_predict_responses,
            }},
            "/v1/models/{name}/versions/{version}:predict": {"post": {
                "summary": "TensorFlow Serving compatible predict, version pinned",
                "parameters": [name_parameter, version_parameter], "requestBody": tf_predict_body,
                "responses": tf_predict_responses,
            }},
            "/v1/models/{name}": {"get": {"summary": "TensorFlow Serving model status",
                                          "parameters": [name_parameter], "responses": status_responses}},
            "/v1/models/{name}/versions/{version}": {"get": {
                "summary": "TensorFlow Serving model status of one version",
                "parameters": [name_parameter, version_parameter], "responses": status_responses}},
            "/v1/models/{name}/metadata": {"get": {"summary": "TensorFlow Serving model metadata",
                                                   "parameters": [name_parameter], "responses": metadata_responses}},
            "/v1/models/{name}/versions/{version}/metadata": {"get": {
                "summary": "TensorFlow Serving model metadata of one version",
                "parameters": [name_parameter, version_parameter], "responses": metadata_responses}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {
                "200": {"description": "The process answers.",
                        "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/readyz": {"get": {"summary": "Readiness: a model is loaded and passed its self-check", "responses": {
                "200": {"description": "Ready.", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["status", "model"]}}}},
                "503": _error("Not ready (no model passed its checks yet, or the instance is draining after SIGTERM); "
                              "the message says why.")}}},
            "/model": {"get": {"summary": "Manifest of the served version and its inference checks", "responses": {
                "200": {"description": "The served model.", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["served", "self_check", "manifest"]}}}},
                "503": _error("No model loaded.")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": {"description": "OpenAPI 3.",
                        "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/": {"get": {"summary": "The web page", "responses": {
                "200": {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "ModelRef": {"type": "object", "required": ["name", "version", "format"],
                         "properties": {"name": {"type": "string"}, "version": {"type": "integer"},
                                        "format": {"type": "string"}}},
            "Prediction": {"type": "object", "required": ["label", "index", "percent"], "properties": {
                "label": {"type": "string", **({"enum": labels} if labels else {})},
                "index": {"type": "integer", "minimum": 0},
                "percent": {"type": "number", "minimum": 0, "maximum": 100}}},
            "Predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}, "minItems": 1},
            "OutOfDistribution": {"type": "boolean", "nullable": True,
                                  "description": "True when the photo does not look like anything the model was "
                                                 "trained on (its ood_score is above 1); null for a model exported "
                                                 "without a detector."},
            "OodScore": {"type": "number", "minimum": 0, "nullable": True,
                         "description": "How unlike the training data the photo is: 0 typical, above 1 flagged "
                                        "(GET /model: the method, the threshold and the measured flag rates)."},
            "PredictResponse": {"type": "object", "required": ["model", "timing_ms"], "properties": {
                "model": {"$ref": "#/components/schemas/ModelRef"},
                "predictions": {"$ref": "#/components/schemas/Predictions"},
                "out_of_distribution": {"$ref": "#/components/schemas/OutOfDistribution"},
                "ood_score": {"$ref": "#/components/schemas/OodScore"},
                "results": {"type": "array", "items": {
                    "type": "object", "required": ["predictions", "out_of_distribution", "ood_score"], "properties": {
                        "filename": {"type": "string", "nullable": True},
                        "predictions": {"$ref": "#/components/schemas/Predictions"},
                        "out_of_distribution": {"$ref": "#/components/schemas/OutOfDistribution"},
                        "ood_score": {"$ref": "#/components/schemas/OodScore"}}}},
                "timing_ms": {"type": "object", "properties": {
                    "decode": {"type": "number"}, "inference": {"type": "number"}, "total": {"type": "number"}}}}},
            "TFServingRequest": {"type": "object", "anyOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
                                 "properties": {
                "instances": instances,
                "inputs": {"oneOf": [instances, {"type": "object", "required": ["image"],
                                                 "properties": {"image": instances}}]},
            }},
            "TFServingResponse": {"type": "object", "required": ["predictions"], "properties": {
                "predictions": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}},
        }},
    }
