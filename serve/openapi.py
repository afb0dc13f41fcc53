"""The OpenAPI 3 description of the service, served at /openapi.json."""

from __future__ import annotations


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _protocol_error(description: str) -> dict:
    """TF Serving's and the V2 protocol's error: {"error": "<message>"}."""
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProtocolError"}}}}


def _pixel_array(shape: list[int] | None) -> dict:
    """A pixel-array instance: height x width x channels numbers 0-255 (a greyscale model also takes
    height x width). Only the outer length is in the schema: spelling out every nested pixel makes
    generated examples (and validators) needlessly slow; the description and the 400 say the rest."""
    # Every level typed, so that no part is "any JSON value": generators (schemathesis) recurse into those.
    value = {"type": "number", "minimum": 0, "maximum": 255}
    pixel = {"anyOf": [value, {"type": "array", "items": value}]}
    if not shape:
        return {"type": "array", "items": {"type": "array", "items": pixel},
                "description": "Pixels, height x width x channels, 0-255."}
    height, width, channels = shape
    return {"type": "array", "minItems": height, "maxItems": height, "items": {"type": "array", "items": pixel},
            "description": f"{height} rows of {width} pixels, each a number 0-255"
                           f"{' (or [value])' if channels == 1 else f' as [{channels} values]'}."}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _v2_paths(name: dict, version: dict, classes: int | None, max_images: int) -> dict:
    """The Open Inference Protocol (KServe V2) routes (serve/inference_v2.py)."""
    errors = {"400": _protocol_error("A malformed request, tensor or image."),
              "404": _protocol_error("No such model or version is served."),
              "413": _protocol_error("Too many bytes, pixels or images."),
              "503": _protocol_error("The model (version) is not loaded, or was refused.")}
    infer = {
        "parameters": [{"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "The binary tensor extension: the length of the JSON header that starts the "
                                       "body; the binary tensors follow it."}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/V2InferenceRequest"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                         "description": "The JSON header, then the binary tensors."}}},
        "responses": {
            "200": {"description": "The probabilities (or, with the classification parameter, \"score:index:label\" "
                                   "strings); binary outputs follow the JSON header when asked for.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2InferenceResponse"}},
                                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            **errors},
    }
    metadata = {"200": _json({"$ref": "#/components/schemas/V2ModelMetadata"}, "The model's inputs and output."),
                "404": errors["404"], "503": errors["503"]}
    ready = {"200": _json({"type": "object", "required": ["name", "ready"]}, "The model (version) is served."),
             "404": errors["404"], "503": errors["503"]}
    return {
        "/v2": {"get": {"summary": "V2 server metadata", "responses": {"200": _json(
            {"type": "object", "required": ["name", "version", "extensions"]}, "Name, version, extensions.")}}},
        "/v2/health/live": {"get": {"summary": "V2 liveness", "responses": {
            "200": _json({"type": "object", "required": ["live"]}, "Alive.")}}},
        "/v2/health/ready": {"get": {"summary": "V2 readiness (as /readyz)", "responses": {
            "200": _json({"type": "object", "required": ["ready"]}, "Ready."),
            "503": _json({"type": "object", "required": ["ready", "error"]}, "Not ready; the error says why.")}}},
        "/v2/models/{name}": {"get": {"summary": "V2 model metadata", "parameters": [name], "responses": metadata}},
        "/v2/models/{name}/versions/{version}": {"get": {"summary": "V2 model metadata of one version",
                                                         "parameters": [name, version], "responses": metadata}},
        "/v2/models/{name}/ready": {"get": {"summary": "V2 model readiness", "parameters": [name],
                                            "responses": ready}},
        "/v2/models/{name}/versions/{version}/ready": {"get": {"summary": "V2 model version readiness",
                                                               "parameters": [name, version], "responses": ready}},
        "/v2/models/{name}/infer": {"post": {"summary": "V2 inference", **infer,
                                             "parameters": [name, *infer["parameters"]]}},
        "/v2/models/{name}/versions/{version}/infer": {"post": {"summary": "V2 inference on one version", **infer,
                                                                "parameters": [name, version, *infer["parameters"]]}},
    }


def _v2_schemas(classes: int | None, max_images: int, shape: list[int] | None) -> dict:
    count = {"type": "integer", "minimum": 1, "maximum": max_images}
    image = {"type": "object", "required": ["name", "datatype", "shape", "data", "parameters"], "properties": {
        "name": {"type": "string", "enum": ["image"]},
        "datatype": {"type": "string", "enum": ["BYTES"]},
        "shape": {"type": "array", "minItems": 1, "maxItems": 1, "items": count,
                  "description": "[N]: as many as the photos in data ([N, 1] is accepted too)."},
        "parameters": {"type": "object", "required": ["content_type"],
                       "properties": {"content_type": {"type": "string", "enum": ["base64"]}}},
        "data": {"type": "array", "minItems": 1, "maxItems": max_images,
                 "items": {"type": "string", "description": "A JPEG, PNG, WebP, GIF, BMP or TIFF file, base64."}}}}
    pixel_shape = ({"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "integer"},
                    "description": f"[N, {', '.join(map(str, shape))}]"} if shape else
                   {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "integer"}})
    pixels = {"type": "object", "required": ["name", "datatype", "shape", "data"], "properties": {
        "name": {"type": "string", "enum": ["pixels"]},
        "datatype": {"type": "string", "enum": ["UINT8", "FP32"]},
        "shape": pixel_shape,
        "data": {"type": "array", "minItems": 1, "items": {"type": "number", "minimum": 0, "maximum": 255},
                 "description": "The pixels, 0-255, flat in row-major order: as many as the shape holds (nested "
                                "rows are accepted too)."}}}
    output = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "enum": ["probabilities"]},
        "parameters": {"type": "object", "properties": {
            "binary_data": {"type": "boolean"},
            "classification": {"type": "integer", "minimum": 1, **({"maximum": classes} if classes else {})}}}}}
    tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array"},
        "parameters": {"type": "object"}}}
    return {
        "V2InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {"oneOf": [image, pixels]},
                       "description": "Exactly one input: 'image' (encoded photos) or 'pixels'."},
            "outputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": output}}},
        "V2InferenceResponse": {"type": "object", "required": ["model_name", "model_version", "outputs"],
                                "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                                               "id": {"type": "string"},
                                               "outputs": {"type": "array", "items": tensor}}},
        "V2ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                            "properties": {"name": {"type": "string"},
                                           "versions": {"type": "array", "items": {"type": "string"}},
                                           "platform": {"type": "string"},
                                           "inputs": {"type": "array", "items": tensor},
                                           "outputs": {"type": "array", "items": tensor}}},
    }


def _on_device_paths() -> dict:
    """What the page loads to classify on the device (serve/in_browser.py)."""
    def binary(kinds: str, description: str) -> dict:
        return {"description": description, "content": {kind: {"schema": {"type": "string", "format": "binary"}}
                                                        for kind in kinds.split()}}

    missing = _error("Not available on this service (the message says why).")
    file_name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/ondevice/model.json": {"get": {"summary": "The served version's ONNX file for the page: where, sha256, "
                                                   "labels, input recipe, detector", "responses": {
            "200": _json({"type": "object", "required": ["available"]}, "The description."),
            "503": _json({"type": "object", "required": ["available", "reason"]}, "No model served yet.")}}},
        "/ondevice/model.onnx": {"get": {"summary": "The ONNX file", "responses": {
            "200": binary("application/octet-stream", "The file (ETag: its sha256)."), "404": missing}}},
        "/ondevice/ood.bin": {"get": {"summary": "The out-of-distribution detector's arrays", "responses": {
            "200": binary("application/octet-stream", "float32 arrays, shapes in model.json."), "404": missing}}},
        "/ondevice/runtime/{name}": {"get": {"summary": "onnxruntime-web's files", "parameters": [file_name],
                                             "responses": {"200": binary("text/javascript application/wasm",
                                                                          "A runtime file."),
                                                           "404": missing}}},
        "/ondevice/{name}": {"get": {"summary": "The page's JavaScript modules", "parameters": [file_name],
                                     "responses": {"200": binary("text/javascript", "A module."), "404": missing}}},
        "/sw.js": {"get": {"summary": "The page's service worker", "responses": {
            "200": binary("text/javascript", "The service worker.")}}},
    }


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
        "400": _protocol_error("Bad JSON, instance, example or image; an unknown version label."),
        "404": _protocol_error("No such model or version is served."),
        "413": _protocol_error("Too many bytes, pixels or instances."),
        "503": _protocol_error("The model (version) is not loaded, or was refused."),
    }
    models = served.get("models") if served else None
    name_parameter = {"name": "name", "in": "path", "required": True,
                      "schema": {"type": "string", **({"enum": models} if models else {})},
                      "description": "A served model's name (GET /model lists them).",
                      **({"example": served["name"]} if served else {})}
    label_parameter = {"name": "label", "in": "path", "required": True, "schema": {"type": "string"},
                       "description": "A version label of the model (models/<name>/serving.json)."}
    v2_version_parameter = {"name": "version", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                            **({"example": str(served["version"])} if served else {})}
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
        "200": {"description": "The status of every version present (AVAILABLE, LOADING or END).",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TFServingStatus"}}}},
        "400": tf_errors["400"], "404": tf_errors["404"],
    }
    metadata_responses = {
        "200": {"description": "The signatures of the served version (serving_default and classify).",
                "content": {"application/json": {"schema": {"type": "object",
                                                            "required": ["model_spec", "metadata"]}}}},
        "400": tf_errors["400"], "404": tf_errors["404"], "503": tf_errors["503"],
    }
    tf_classify_body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TFServingClassifyRequest"}}},
    }
    tf_classify_responses = {
        "200": {"description": "Every class with its probability, in label order, one list per example.",
                "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/TFServingClassifyResponse"}}}},
        **tf_errors,
    }
    tf_paths = {}
    for where, parameters in (("", [name_parameter]), ("/versions/{version}", [name_parameter, version_parameter]),
                              ("/labels/{label}", [name_parameter, label_parameter])):
        tf_paths[f"/v1/models/{{name}}{where}:predict"] = {"post": {
            "summary": "TensorFlow Serving predict" + (f" ({where.split('/')[1][:-1]} chosen)" if where else ""),
            "parameters": parameters, "requestBody": tf_predict_body, "responses": tf_predict_responses}}
        tf_paths[f"/v1/models/{{name}}{where}:classify"] = {"post": {
            "summary": "TensorFlow Serving classify" + (f" ({where.split('/')[1][:-1]} chosen)" if where else ""),
            "parameters": parameters, "requestBody": tf_classify_body, "responses": tf_classify_responses}}
        tf_paths[f"/v1/models/{{name}}{where}"] = {"get": {
            "summary": "TensorFlow Serving model status", "parameters": parameters, "responses": status_responses}}
        tf_paths[f"/v1/models/{{name}}{where}/metadata"] = {"get": {
            "summary": "TensorFlow Serving model metadata", "parameters": parameters,
            "responses": metadata_responses}}
    v2_paths = _v2_paths(name_parameter, v2_version_parameter, classes, max_images)
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
                "parameters": [{"name": "top_k", "in": "query", "required": False, "schema": top_k},
                               {"name": "model", "in": "query", "required": False,
                                "schema": {"type": "string", **({"enum": models} if models else {})},
                                "description": "Another model of the repository than the default one."}],
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
                    "404": _error("No model of that name (?model=) is served."),
                },
            }},
            **tf_paths,
            **v2_paths,
            "/healthz": {"get": {"summary": "Liveness", "responses": {
                "200": {"description": "The process answers.",
                        "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/readyz": {"get": {"summary": "Readiness: a model is loaded and passed its self-check", "responses": {
                "200": {"description": "Ready.", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["status", "model"]}}}},
                "503": _error("Not ready (a model with a loadable version serves none yet, or the instance is "
                              "draining after SIGTERM); the message says why.")}}},
            "/model": {"get": {"summary": "Manifest of the served version and its inference checks; every model's "
                                          "state", "parameters": [
                {"name": "model", "in": "query", "required": False,
                 "schema": {"type": "string", **({"enum": models} if models else {})},
                 "description": "Another model than the default one."}], "responses": {
                "404": _error("No model of that name is served."),
                "200": {"description": "The served model.", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["served", "self_check", "manifest"]}}}},
                "503": _error("No model loaded.")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": {"description": "OpenAPI 3.",
                        "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            **_on_device_paths(),
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
                "signature_name": {"type": "string", "enum": ["", "serving_default"]},
                "instances": instances,
                "inputs": {"oneOf": [instances, {"type": "object", "required": ["image"],
                                                 "properties": {"image": instances}}]},
            }},
            "ProtocolError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}},
                              "additionalProperties": False},
            "TFServingStatus": {"type": "object", "required": ["model_version_status"], "properties": {
                "model_version_status": {"type": "array", "items": {
                    "type": "object", "required": ["version", "state", "status"], "properties": {
                        "version": {"type": "string"},
                        "state": {"type": "string", "enum": ["LOADING", "AVAILABLE", "END"]},
                        "status": {"type": "object", "required": ["error_code", "error_message"]}}}}}},
            "TFServingClassifyRequest": {"type": "object", "required": ["examples"], "properties": {
                "signature_name": {"type": "string", "enum": ["", "serving_default", "classify"]},
                "context": {"type": "object"},
                "examples": {"type": "array", "minItems": 1, "maxItems": max_images, "items": {
                    "type": "object", "required": ["image"],
                    "properties": {"image": {"oneOf": [b64_instance, pixels]}}}},
            }},
            "TFServingClassifyResponse": {"type": "object", "required": ["results"], "properties": {
                "results": {"type": "array", "items": {"type": "array", "items": {
                    "type": "array", "minItems": 2, "maxItems": 2}}}}},
            **_v2_schemas(classes, max_images, served.get("input") if served else None),
            "TFServingResponse": {"type": "object", "required": ["predictions"], "properties": {
                "predictions": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}},
        }},
    }
