"""The Open Inference Protocol (V2) and TensorFlow Serving's REST API in detail, through Flask's test client on the
tiny model: the binary tensor extension both ways, base64 BYTES, pixels, the classification extension, errors as
each protocol writes them, TF Serving's :classify and the shape of its metadata (as TF Serving's own source and test
data print it: tensorflow_serving/servables/tensorflow/testdata/saved_model_half_plus_two_2_versions_metadata.json)."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
from helpers import png_bytes

INFER = "/v2/models/fashion_mnist/infer"
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def photos(fashion_mnist_test):
    x, _ = fashion_mnist_test
    return x[100:104], [png_bytes(image) for image in x[100:104]]


@pytest.fixture(scope="module")
def reference(client_module, photos):
    """TF Serving's :predict answer for the photos: every other form must give these probabilities."""
    _, pngs = photos
    response = client_module.post("/v1/models/fashion_mnist:predict",
                                  json={"instances": [{"b64": base64.b64encode(p).decode()} for p in pngs]})
    return np.asarray(response.get_json()["predictions"], dtype=np.float32)


@pytest.fixture(scope="module")
def client_module(app):
    return app.test_client()


def binary_request(header: dict, *blobs: bytes) -> dict:
    text = json.dumps(header).encode()
    return {"data": text + b"".join(blobs), "headers": {HEADER: str(len(text))},
            "content_type": "application/octet-stream"}


def bytes_tensor(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def split_binary(response) -> tuple[dict, bytes]:
    length = int(response.headers[HEADER])
    return json.loads(response.data[:length]), response.data[length:]


def test_binary_bytes_in_and_binary_fp32_out(client, photos, reference):
    _, pngs = photos
    blob = bytes_tensor(pngs)
    response = client.post(INFER, **binary_request({
        "id": "req-7", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [4, 1],
                                   "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}, blob))
    assert response.status_code == 200 and response.mimetype == "application/octet-stream"
    header, data = split_binary(response)
    assert header["id"] == "req-7" and header["model_name"] == "fashion_mnist" and header["model_version"] == "1"
    (output,) = header["outputs"]
    assert output["datatype"] == "FP32" and output["shape"] == [4, 10]
    assert output["parameters"]["binary_data_size"] == len(data) == 4 * 10 * 4
    probabilities = np.frombuffer(data, dtype="<f4").reshape(4, 10)
    assert np.abs(probabilities - reference).max() < 1e-6


def test_base64_bytes_in_json_out_and_classification(client, photos, reference):
    _, pngs = photos
    response = client.post(INFER, json={
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [4], "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(p).decode() for p in pngs]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]})
    assert response.status_code == 200 and response.mimetype == "application/json"
    (output,) = response.get_json()["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [4, 2]
    from train.data import FASHION_MNIST_LABELS

    for row, (first, second) in zip(reference, np.asarray(output["data"]).reshape(4, 2), strict=True):
        order = np.argsort(-row, kind="stable")[:2]
        assert first == f"{row[order[0]]:f}:{order[0]}:{FASHION_MNIST_LABELS[order[0]]}"
        assert second.split(":")[1] == str(order[1])
    binary = client.post(INFER, json={
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [4], "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(p).decode() for p in pngs]}],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]})
    header, data = split_binary(binary)
    strings, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        strings.append(data[offset + 4:offset + 4 + length].decode())
        offset += 4 + length
    assert strings == output["data"] and header["outputs"][0]["parameters"]["binary_data_size"] == len(data)


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_pixels_in_json_and_binary(client, photos, reference, datatype):
    pixels, _ = photos
    dtype = np.uint8 if datatype == "UINT8" else np.float32
    as_json = client.post(INFER, json={"inputs": [{"name": "pixels", "datatype": datatype, "shape": [4, 28, 28, 1],
                                                   "data": pixels.astype(dtype).tolist()}]})
    blob = pixels.astype(dtype).tobytes()
    as_binary = client.post(INFER, **binary_request({"inputs": [{
        "name": "pixels", "datatype": datatype, "shape": [4, 28, 28, 1],
        "parameters": {"binary_data_size": len(blob)}}]}, blob))
    for response in (as_json, as_binary):
        assert response.status_code == 200, response.get_json()
        got = np.asarray(response.get_json()["outputs"][0]["data"], dtype=np.float32).reshape(4, 10)
        assert np.abs(got - reference).max() < 1e-6


def bad(client, status: int, fragment: str, **request):
    response = client.post(INFER, **request)
    body = response.get_json()
    assert response.status_code == status, body
    assert set(body) == {"error"} and isinstance(body["error"], str) and fragment in body["error"], body


def image_tensor(pngs, **extra):
    return {"name": "image", "datatype": "BYTES", "shape": [len(pngs)], "parameters": {"content_type": "base64"},
            "data": [base64.b64encode(p).decode() for p in pngs], **extra}


def test_v2_errors_are_error_strings_with_the_right_status(client, photos):
    _, pngs = photos
    blob = bytes_tensor(pngs[:1])
    bad(client, 400, "must be a JSON object", data=b"not json", content_type="application/json")
    bad(client, 400, "'inputs' must be a non-empty list", json={"inputs": []})
    bad(client, 400, "unknown input 'photo'", json={"inputs": [{**image_tensor(pngs[:1]), "name": "photo"}]})
    bad(client, 400, "exactly one input", json={"inputs": [image_tensor(pngs[:1]), image_tensor(pngs[:1])]})
    bad(client, 400, "is a BYTES tensor", json={"inputs": [{**image_tensor(pngs[:1]), "datatype": "FP32"}]})
    bad(client, 400, "shape [2] holds 2 elements, the data 1", json={"inputs": [image_tensor(pngs[:1], shape=[2])]})
    bad(client, 400, 'marked "parameters": {"content_type": "base64"}',
        json={"inputs": [{**image_tensor(pngs[:1]), "parameters": {}}]})
    bad(client, 400, "not a base64 string", json={"inputs": [image_tensor([b""], data=["@@@"])]})
    bad(client, 400, "not a JPEG, PNG", json={"inputs": [image_tensor([b"plain text, no photo"])]})
    bad(client, 400, "pixel values must be between 0 and 255", json={"inputs": [{
        "name": "pixels", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": [300.0] * 784}]})
    bad(client, 400, "has shape [N, 28, 28, 1]", json={"inputs": [{
        "name": "pixels", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}]})
    bad(client, 400, "'pixels' is UINT8 or FP32", json={"inputs": [{
        "name": "pixels", "datatype": "INT64", "shape": [1, 28, 28, 1], "data": [0] * 784}]})
    bad(client, 400, "unknown output 'logits'", json={"inputs": [image_tensor(pngs[:1])], "outputs": [{"name":
                                                                                                         "logits"}]})
    bad(client, 400, "classification must be a whole number from 1 to 10", json={
        "inputs": [image_tensor(pngs[:1])], "outputs": [{"name": "probabilities", "parameters": {"classification":
                                                                                                   11}}]})
    header = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                          "parameters": {"binary_data_size": len(blob) + 10}}]}
    bad(client, 400, "does not fit", **binary_request(header, blob))
    overlong = struct.pack("<I", len(pngs[0]) + 5) + pngs[0]  # an element's length beyond its tensor's bytes
    header["inputs"][0]["parameters"]["binary_data_size"] = len(overlong)
    bad(client, 400, "runs past the end", **binary_request(header, overlong))
    header["inputs"][0]["parameters"]["binary_data_size"] = len(blob) - 1
    bad(client, 400, "belong to no input", **binary_request(header, blob))
    header["inputs"][0]["parameters"]["binary_data_size"] = len(blob)
    bad(client, 400, "belong to no input", **binary_request(header, blob, b"extra"))
    request = binary_request(header, blob)
    request["headers"][HEADER] = "99999"
    bad(client, 400, HEADER, **request)
    bad(client, 413, "the limit is", json={"inputs": [image_tensor(pngs[:1] * 33)]})
    unknown = client.post("/v2/models/nope/infer", json={"inputs": [image_tensor(pngs[:1])]})
    assert unknown.status_code == 404 and "Model 'nope' is not served here" in unknown.get_json()["error"]
    assert client.post("/v2/models/fashion_mnist/versions/x/infer", json={}).status_code == 404
    wrong_method = client.get(INFER)
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"]
    assert isinstance(wrong_method.get_json()["error"], str)


def test_v2_server_and_model_metadata(client):
    server = client.get("/v2").get_json()
    assert server["name"] == "pocketcnn" and server["extensions"] == ["binary_tensor_data", "classification"]
    assert client.get("/v2/health/live").get_json() == {"live": True}
    metadata = client.get("/v2/models/fashion_mnist/versions/1").get_json()
    assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
    assert client.get("/v2/models/fashion_mnist/versions/1/ready").get_json() == {"name": "fashion_mnist",
                                                                                "ready": True}


# --- TensorFlow Serving ------------------------------------------------------------------------------------

def test_tf_serving_classify_answers_results_in_label_order(client, photos, reference):
    pixels, pngs = photos
    from train.data import FASHION_MNIST_LABELS

    examples = [{"image": {"b64": base64.b64encode(pngs[0]).decode()}},
                {"image": [{"b64": base64.b64encode(pngs[1]).decode()}]},  # a feature list holding one value
                {"image": pixels[2].reshape(-1).tolist()},  # flat pixels, as a tf.Example float list
                {}]  # the image from the context
    response = client.post("/v1/models/fashion_mnist:classify", json={
        "signature_name": "classify", "examples": examples,
        "context": {"image": {"b64": base64.b64encode(pngs[3]).decode()}}})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [[pair[0] for pair in row] for row in results] == [FASHION_MNIST_LABELS] * 4
    assert np.abs(np.asarray([[pair[1] for pair in row] for row in results]) - reference).max() < 1e-6


@pytest.mark.parametrize("body,fragment", [
    ({"examples": []}, '"examples" must be a non-empty list'),
    ({"examples": [{"pixels": [1]}]}, 'must be an object with an "image" feature'),
    ({"examples": [{"image": {"b64": "!!"}}]}, "not valid base64"),
    ({"examples": [{"image": [1, 2, 3]}]}, "examples[0] must be"),
    ({"examples": [{"image": {"b64": "aGk="}}], "context": []}, '"context" must be an object'),
    ({"examples": [{"image": {"b64": "aGk="}}], "signature_name": "predict_images"}, "not found in signature def"),
])
def test_tf_serving_classify_errors(client, body, fragment):
    response = client.post("/v1/models/fashion_mnist:classify", json=body)
    assert response.status_code == 400 and fragment in response.get_json()["error"]


def test_tf_serving_metadata_has_tf_servings_shape(client):
    document = client.get("/v1/models/fashion_mnist/metadata").get_json()
    assert document["model_spec"] == {"name": "fashion_mnist", "signature_name": "", "version": "1"}
    signatures = document["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "classify"}
    for signature in signatures.values():
        assert set(signature) == {"inputs", "outputs", "method_name", "defaults"} and signature["defaults"] == {}
        for info in [*signature["inputs"].values(), *signature["outputs"].values()]:
            assert set(info) == {"dtype", "tensor_shape", "name"} and info["dtype"].startswith("DT_")
            assert set(info["tensor_shape"]) == {"dim", "unknown_rank"}
            assert all(set(d) == {"size", "name"} and isinstance(d["size"], str) for d in info["tensor_shape"]["dim"])
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert [d["size"] for d in default["inputs"]["image"]["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]
    assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"
    assert signatures["classify"]["inputs"]["inputs"]["tensor_shape"] == {"dim": [], "unknown_rank": True}


def test_tf_serving_errors_are_error_strings(client):
    for response, status in ((client.get("/v1/models/nope"), 404), (client.get("/v1/models/nope/metadata"), 404),
                             (client.post("/v1/models/fashion_mnist:predict", data=b"{"), 400),
                             (client.get("/v1/models/fashion_mnist:predict"), 405),
                             (client.get("/v1/models/fashion_mnist/versions/7/metadata"), 404)):
        body = response.get_json()
        assert response.status_code == status and set(body) == {"error"} and isinstance(body["error"], str), body
