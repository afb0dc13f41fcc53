"""The service through Flask's test client: every input form, batches, every error status, the TF
Serving routes, readiness, the self-check, version policy, hot pick-up, metrics and OpenAPI.

On the tiny model (tests/tiny_model.py: a linear classifier as ONNX, built in a second), so the HTTP
contract is checked without training anything; the real model's accuracy and parity are tested elsewhere."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading

import numpy as np
import pytest
from helpers import copy_version, doctor_weights, encode, png_bytes, png_claiming_size, served_artifact, wait_until
from PIL import Image
from tiny_model import TINY_FORMAT

from contract import decode_image, read_manifest
from contract.files import sha256_file
from contract.runtime import open_runner
from serve import create_app


def make_app(repository, **settings):
    """The service on a repository of tiny-model versions, loaded before the first request."""
    return create_app({"MODEL_REPOSITORY": str(repository), "MODEL_FORMAT": TINY_FORMAT, "LOAD_IN_BACKGROUND": False,
                       "POLL_SECONDS": 0, **settings})


@pytest.fixture(scope="module")
def images(fashion_mnist_test):
    x, y = fashion_mnist_test
    return [png_bytes(image) for image in x[:6]], x[:6], y[:6]


@pytest.fixture(scope="module")
def expected(tiny_version, images):
    """What the served file gives for each image, computed without the service."""
    runner = open_runner(tiny_version / served_artifact(tiny_version)[1], "onnxruntime")
    pngs, _, _ = images
    return runner.predict(np.stack([decode_image(p, 28, 28, 1) for p in pngs]))


def check_answer(predictions, probabilities, labels):
    percents = [p["percent"] for p in predictions]
    assert percents == sorted(percents, reverse=True)
    assert sum(percents) == pytest.approx(100.0, abs=1e-6)
    assert [p["label"] for p in predictions] == [labels[i] for i in np.argsort(-probabilities, kind="stable")]
    assert predictions[0]["percent"] == pytest.approx(100 * probabilities.max() / probabilities.sum(), abs=0.011)


# --- input forms -------------------------------------------------------------------------------

def test_multipart_upload(client, images, expected, app):
    pngs, _, _ = images
    response = client.post("/predict", data={"image": (io.BytesIO(pngs[0]), "boot.png")})
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == {"name": "fashion_mnist", "version": 1, "format": TINY_FORMAT}
    labels = app.extensions["pocketcnn"].current.labels
    assert len(body["predictions"]) == 10
    check_answer(body["predictions"], expected[0], labels)
    assert set(body["timing_ms"]) == {"decode", "inference", "total"}


def test_several_files_answer_in_order(client, images, expected, app):
    pngs, _, _ = images
    files = [(io.BytesIO(p), f"{i}.png") for i, p in enumerate(pngs)]
    body = client.post("/predict", data={"image": files}).get_json()
    labels = app.extensions["pocketcnn"].current.labels
    assert [r["filename"] for r in body["results"]] == [f"{i}.png" for i in range(len(pngs))]
    for result, probabilities in zip(body["results"], expected, strict=True):
        check_answer(result["predictions"], probabilities, labels)


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "application/octet-stream"])
def test_raw_body(client, images, expected, app, content_type):
    # the declared type need not match the bytes: the decoder looks at the bytes
    body = client.post("/predict", data=images[0][1], content_type=content_type).get_json()
    check_answer(body["predictions"], expected[1], app.extensions["pocketcnn"].current.labels)


def test_base64_json_single_batch_and_data_url(client, images, expected, app):
    pngs, _, _ = images
    labels = app.extensions["pocketcnn"].current.labels
    b64 = [base64.b64encode(p).decode() for p in pngs]
    single = client.post("/predict", json={"image": b64[2]}).get_json()
    check_answer(single["predictions"], expected[2], labels)
    batch = client.post("/predict", json={"images": b64[:3]}).get_json()
    assert len(batch["results"]) == 3 and batch["results"][1]["filename"] is None
    check_answer(batch["results"][2]["predictions"], expected[2], labels)
    data_url = client.post("/predict", json={"image": "data:image/png;base64," + b64[3]}).get_json()
    check_answer(data_url["predictions"], expected[3], labels)


def test_photos_as_people_send_them(client, images):
    """A big EXIF-rotated RGBA photo and a CMYK JPEG go through the same decode as training."""
    _, x, _ = images
    picture = Image.fromarray(x[0].squeeze(-1)).resize((640, 640)).convert("RGBA")
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upside down
    upside_down = encode(picture.rotate(180), "PNG", exif=exif)
    upright = client.post("/predict", data=encode(picture, "PNG"), content_type="image/png").get_json()
    rotated = client.post("/predict", data=upside_down, content_type="image/png").get_json()
    assert rotated["predictions"] == upright["predictions"]  # the service turned it the right way up
    not_turned = client.post("/predict", data=encode(picture.rotate(180), "PNG"), content_type="image/png").get_json()
    assert not_turned["predictions"] != upright["predictions"]  # (the orientation really matters here)
    cmyk = encode(Image.fromarray(x[0].squeeze(-1)).convert("CMYK"), "JPEG", quality=95)
    assert client.post("/predict", data=cmyk, content_type="image/jpeg").status_code == 200


@pytest.mark.parametrize("where", ["query", "form", "json"])
def test_top_k(client, images, where):
    png = images[0][0]
    if where == "query":
        response = client.post("/predict?top_k=3", data=png, content_type="image/png")
    elif where == "form":
        response = client.post("/predict", data={"image": (io.BytesIO(png), "a.png"), "top_k": "3"})
    else:
        response = client.post("/predict", json={"image": base64.b64encode(png).decode(), "top_k": 3})
    predictions = response.get_json()["predictions"]
    assert len(predictions) == 3 and predictions[0]["percent"] >= predictions[2]["percent"]


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-1", "0", "abc", "10000", "2.5", ""])
def test_bad_top_k_is_400(client, images, value):
    response = client.post("/predict", json={"image": base64.b64encode(images[0][0]).decode(),
                                             "top_k": value if value != "" else True})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_top_k"
    assert "top_k must be a whole number from 1 to 10" in response.get_json()["error"]["message"]


def _error(response):
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"].endswith((".", ")")), "a sentence"
    return response.status_code, body["error"]["code"]


def _protocol_error(response):
    """TF Serving's and the V2 protocol's error: {"error": "<message>"} (no code)."""
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"].strip(), body
    return response.status_code, body["error"]


@pytest.mark.parametrize("request_kwargs,status,code", [
    ({"data": {"photo": (io.BytesIO(b"x"), "a.png")}}, 400, "missing_image"),
    ({"data": {"image": (io.BytesIO(b""), "empty.png")}}, 400, "empty_image"),
    ({}, 400, "missing_image"),
    ({"data": b"<html>not an image</html>", "content_type": "image/png"}, 400, "invalid_image"),
    ({"data": b"\x89PNG\r\n\x1a\n\x00\x00", "content_type": "image/png"}, 400, "invalid_image"),
    ({"json": {"image": "%%% not base64 %%%"}}, 400, "invalid_base64"),
    ({"json": {"image": 12}}, 400, "invalid_base64"),
    ({"json": ["image"]}, 400, "invalid_json"),
    ({"json": {"picture": "abc"}}, 400, "missing_image"),
    ({"json": {"images": []}}, 400, "invalid_json"),
    ({"data": b"{not json", "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": png_claiming_size(30000, 30000), "content_type": "image/png"}, 413, "image_too_large"),
    ({"data": b"hello", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ({"data": b"a=1", "content_type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
])
def test_bad_requests_get_the_documented_status(client, request_kwargs, status, code):
    assert _error(client.post("/predict", **request_kwargs)) == (status, code)


def test_limits_on_bytes_and_images(tiny_repository, images):
    app = make_app(tiny_repository, MAX_CONTENT_LENGTH=50_000, MAX_IMAGES=3)
    client = app.test_client()
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    big = encode(Image.fromarray(noise), "PNG")  # noise does not compress
    assert len(big) > 50_000
    status, code = _error(client.post("/predict", data=big, content_type="image/png"))
    assert (status, code) == (413, "request_entity_too_large")
    def files(count):
        return [(io.BytesIO(images[0][0]), f"{i}.png") for i in range(count)]
    assert _error(client.post("/predict", data={"image": files(4)})) == (413, "too_many_images")
    assert client.post("/predict", data={"image": files(3)}).status_code == 200


def test_unknown_routes_and_methods(client):
    assert _error(client.get("/nowhere")) == (404, "not_found")
    response = client.get("/predict")
    assert _error(response) == (405, "method_not_allowed") and "POST" in response.headers["Allow"]
    assert _error(client.delete("/healthz"))[0] == 405


# --- TensorFlow Serving compatibility ------------------------------------------------------------

def test_tf_serving_predict_with_b64_and_pixel_arrays(client, images, expected):
    pngs, x, _ = images
    body = {"instances": [{"b64": base64.b64encode(pngs[0]).decode()}, x[1].squeeze(-1).tolist(), x[2].tolist(),
                          {"image": {"b64": base64.b64encode(pngs[3]).decode()}}]}
    response = client.post("/v1/models/fashion_mnist:predict", json=body)
    assert response.status_code == 200
    predictions = np.asarray(response.get_json()["predictions"])
    assert predictions.shape == (4, 10)
    assert np.abs(predictions - expected[:4]).max() < 1e-6
    pinned = client.post("/v1/models/fashion_mnist/versions/1:predict", json={"instances": body["instances"][:1]})
    assert pinned.status_code == 200


@pytest.mark.parametrize("path,status", [
    ("/v1/models/other:predict", 404),
    ("/v1/models/fashion_mnist/versions/7:predict", 404),
    ("/v1/models/..%2F..%2Fetc%2Fpasswd:predict", 404),
    ("/v1/models/../../etc/passwd:predict", 404),
    ("/v1/models/%2e%2e:predict", 404),
])
def test_tf_serving_unknown_or_tricky_model_names(client, path, status):
    response = client.post(path, json={"instances": [[0]]})
    assert response.status_code == status
    assert "root:" not in response.get_data(as_text=True)  # nothing from outside the repository is read


@pytest.mark.parametrize("body,message", [
    ({"instances": []}, '"instances" must be a non-empty list'),
    ({"instances": [[1, 2, 3]]}, "28x28x1 array of pixel values"),
    ({"instances": [np.full((28, 28), 300).tolist()]}, "pixel values must be between 0 and 255"),
    ({"instances": ["not-an-object"]}, "instances[0] must be"),
    ({"instances": [{"b64": "!!"}]}, "is not valid base64"),
    ({"signature_name": "x"}, 'Serving signature name: "x" not found'),
    ({"signature_name": 100}, "'signature_name' key must be a string value"),
])
def test_tf_serving_bad_bodies(client, body, message):
    status, text = _protocol_error(client.post("/v1/models/fashion_mnist:predict", json=body))
    assert status == 400 and message in text


def test_tf_serving_status_and_metadata(client):
    status = client.get("/v1/models/fashion_mnist").get_json()
    assert status["model_version_status"][0] == {"version": "1", "state": "AVAILABLE",
                                                 "status": {"error_code": "OK", "error_message": ""}}
    metadata = client.get("/v1/models/fashion_mnist/metadata").get_json()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert [d["size"] for d in signature["inputs"]["image"]["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]
    assert client.get("/v1/models/nope/metadata").status_code == 404


# --- readiness, self-check, version policy, hot pick-up -------------------------------------------

def test_health_and_model_endpoints(client):
    assert client.get("/healthz").get_json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["model"]["version"] == 1
    info = client.get("/model").get_json()
    check = info["self_check"]
    assert check["passed"] and check["deterministic"] and check["runs"] == 5 and check["graph_no_random_ops"]
    assert check["top1_matches"] == check["samples"] >= 8 and check["max_abs_diff"] <= check["tolerance"]
    assert info["manifest"]["labels"][0] == "T-shirt/top"


def test_not_ready_until_a_model_arrives(tmp_path, tiny_version, images):
    app = make_app(tmp_path)
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503 and "no model in" in response.get_json()["error"]["message"]
    assert _error(client.post("/predict", data=images[0][0], content_type="image/png")) == (503, "not_ready")
    assert client.get("/healthz").status_code == 200  # alive, just not ready
    copy_version(tiny_version, tmp_path, 1)
    app.extensions["pocketcnn"].refresh()
    assert client.get("/readyz").status_code == 200
    assert client.post("/predict", data=images[0][0], content_type="image/png").status_code == 200


def test_a_version_seen_half_copied_loads_once_the_copy_completes(tmp_path, tiny_version, images):
    """`cp -r` by hand: the poller can see the manifest before the model file is fully written.
    The failure must not stick to the version once its files are complete (CI saw a worker stay
    unready for good this way)."""
    app = make_app(tmp_path)
    manager, client = app.extensions["pocketcnn"], app.test_client()
    target = tmp_path / "fashion_mnist" / "1"
    shutil.copytree(tiny_version, target)
    served_file = target / served_artifact(target)[1]
    whole = served_file.read_bytes()
    served_file.write_bytes(whole[: len(whole) // 2])  # the copy is half-way through this file
    manifest_stamp = (target / "manifest.json").stat().st_mtime_ns
    manager.refresh()
    assert "fashion_mnist/1" in manager.failures and client.get("/readyz").status_code == 503
    manager.refresh()
    assert client.get("/readyz").status_code == 503, "unchanged files are not loaded again"
    served_file.write_bytes(whole)  # the copy finishes; the manifest is not touched
    assert (target / "manifest.json").stat().st_mtime_ns == manifest_stamp
    manager.refresh()
    assert client.get("/readyz").status_code == 200 and "fashion_mnist/1" not in manager.failures
    assert client.post("/predict", data=images[0][0], content_type="image/png").status_code == 200


@pytest.mark.parametrize("damage,reason", [
    ("doctored", "self-check failed"),
    ("truncated", "does not match its manifest"),
    ("missing", "is missing"),
    ("no-reference", "reference samples unreadable"),
])
def test_a_damaged_model_is_never_served(tmp_path, tiny_version, damage, reason):
    version = copy_version(tiny_version, tmp_path, 1)
    key, file = served_artifact(version)
    model_file = version / file
    if damage == "doctored":
        doctor_weights(model_file)
        manifest = read_manifest(version)
        manifest["artifacts"][key]["sha256"] = sha256_file(model_file)
        (version / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "truncated":
        model_file.write_bytes(model_file.read_bytes()[:5000])
    elif damage == "missing":
        model_file.unlink()
    else:
        shutil.rmtree(version / "reference")
    app = make_app(tmp_path)
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503
    assert reason in ready.get_json()["error"]["message"]
    assert reason in app.test_client().get("/model").get_json()["refused_versions"]["fashion_mnist/1"]


def test_self_check_catches_dropout_left_active(tiny_version):
    """A runner whose outputs vary from run to run (what dropout at inference looks like) fails."""
    from serve.model import ServedModel, self_check

    runner = open_runner(tiny_version / served_artifact(tiny_version)[1], "onnxruntime")
    rng = np.random.default_rng(0)

    class DropoutStillOn:
        def predict(self, pixels):
            out = runner.predict(pixels) * (rng.random((len(pixels), 10)) > 0.5) * 2
            return out / out.sum(axis=1, keepdims=True)

    manifest = read_manifest(tiny_version)
    model = ServedModel("fashion_mnist", 1, tiny_version, TINY_FORMAT, manifest, DropoutStillOn(),
                        manifest["labels"], 28, 28, 1)
    result = self_check(model, manifest["artifacts"][TINY_FORMAT], runs=5)
    assert not result["passed"] and "differ between 5 runs" in result["reason"]
    model.runner = runner
    assert self_check(model, manifest["artifacts"][TINY_FORMAT], runs=5)["passed"]


@pytest.mark.parametrize("policy,served", [("best", 2), ("latest", 3), (1, 1), ("3", 3)])
def test_version_policy(tmp_path, tiny_version, policy, served):
    copy_version(tiny_version, tmp_path, 1, accuracy=0.80)
    copy_version(tiny_version, tmp_path, 2, accuracy=0.95)
    copy_version(tiny_version, tmp_path, 3, accuracy=0.85)
    app = make_app(tmp_path, MODEL_VERSION_POLICY=policy)
    assert app.test_client().get("/readyz").get_json()["model"]["version"] == served


def test_a_pinned_version_that_does_not_exist_is_not_ready(tmp_path, tiny_version):
    copy_version(tiny_version, tmp_path, 1)
    app = make_app(tmp_path, MODEL_VERSION_POLICY=5)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503 and "version 5 of 'fashion_mnist'" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("settings,message", [
    ({"MODEL_VERSION_POLICY": "newest"}, "version policy must be"),
    ({"MODEL_FORMAT": "tflite_int9"}, "POCKETCNN_MODEL_FORMAT must be one of"),
    ({"MAX_IMAGES": 0}, "POCKETCNN_MAX_IMAGES must be a positive integer"),
    ({"MODEL_NAME": "../x"}, "not a valid model name"),
])
def test_bad_settings_refuse_to_start(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        create_app({"MODEL_REPOSITORY": str(tmp_path), "LOAD_IN_BACKGROUND": False, **settings})


def test_hot_pick_up_without_failing_requests_and_never_a_broken_version(tmp_path, tiny_version, images):
    copy_version(tiny_version, tmp_path, 1, accuracy=0.80)
    app = make_app(tmp_path, POLL_SECONDS=0.2, LOAD_IN_BACKGROUND=True)
    manager = app.extensions["pocketcnn"]
    assert manager.wait_first_attempt(30) and manager.ready
    statuses, versions, stop = [], set(), threading.Event()

    def hammer():
        client = app.test_client()
        while not stop.is_set():
            response = client.post("/predict", data=images[0][0], content_type="image/png")
            statuses.append(response.status_code)
            versions.add(response.get_json()["model"]["version"])

    workers = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: len(statuses) >= 20, what="20 requests on version 1")
        copy_version(tiny_version, tmp_path, 2, accuracy=0.95)  # a better version appears
        wait_until(lambda: manager.current.version == 2, timeout=20, what="version 2 picked up")
        answered = len(statuses)
        wait_until(lambda: len(statuses) >= answered + 20, what="20 requests on version 2")
        copy_version(tiny_version, tmp_path, 3, accuracy=0.99, model_bytes=b"garbage")  # better on paper
        wait_until(lambda: "fashion_mnist/3" in manager.failures, timeout=20, what="version 3 tried")
        answered = len(statuses)
        wait_until(lambda: len(statuses) >= answered + 20, what="20 requests after version 3 was refused")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert manager.current.version == 2, "the broken version must not replace the working one"
    assert set(statuses) == {200} and len(statuses) >= 60
    assert versions == {1, 2}
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'pocketcnn_model_load_failures_total{name="fashion_mnist",version="3"} 1.0' in metrics
    assert "pocketcnn_model_swaps_total 1.0" in metrics
    manager.stop()


# --- metrics, OpenAPI, web page ---------------------------------------------------------------------

def test_metrics(client, images):
    client.post("/predict", data=images[0][0], content_type="image/png")
    client.post("/predict", data=b"x", content_type="text/plain")
    client.open("/predict", method="BREW")  # any token is a method to HTTP; it must not become a label value
    text = client.get("/metrics").get_data(as_text=True)
    assert 'method="BREW"' not in text
    assert 'method="other",status="405"}' in text
    assert 'pocketcnn_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    assert 'pocketcnn_requests_total{endpoint="/predict",method="POST",status="415"}' in text
    for histogram in ("pocketcnn_decode_duration_ms", "pocketcnn_inference_duration_ms",
                      "pocketcnn_request_duration_ms"):
        assert f'{histogram}_bucket{{' in text and 'le="0.5"' in text and 'le="1000.0"' in text, histogram
    assert f'pocketcnn_model_info{{format="{TINY_FORMAT}",name="fashion_mnist",version="1"}} 1.0' in text
    assert "pocketcnn_ready 1.0" in text


def test_openapi_documents_every_route(client, app):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    documented = {path for path in document["paths"]}
    routes = {rule.rule.replace("<name>", "{name}").replace("<int:version>", "{version}")
              .replace("<version>", "{version}").replace("<label>", "{label}")
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    assert documented == routes
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert "200" in operation["responses"], (path, method)
    assert document["components"]["schemas"]["Prediction"]["properties"]["label"]["enum"][9] == "Ankle boot"


def test_web_page_is_served(client):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert b"<form" in response.data or b"<input" in response.data


# --- settings ------------------------------------------------------------------------------------------

def test_settings_come_from_the_environment_with_their_types():
    from serve.settings import Settings

    settings = Settings.from_env({"POCKETCNN_WORKERS": "3", "POCKETCNN_POLL_SECONDS": "0.5",
                                  "POCKETCNN_LOAD_IN_BACKGROUND": "false", "POCKETCNN_MODEL_NAME": "shoes",
                                  "UNRELATED": "x"}, overrides={"MAX_IMAGES": 4})
    assert (settings.workers, settings.poll_seconds, settings.load_in_background) == (3, 0.5, False)
    assert (settings.model_name, settings.max_images, settings.threads) == ("shoes", 4, 4)


@pytest.mark.parametrize("environ,message", [
    ({"POCKETCNN_WORKERS": "many"}, "POCKETCNN_WORKERS must be a whole number, not 'many'"),
    ({"POCKETCNN_READ_TIMEOUT": "-1"}, "POCKETCNN_READ_TIMEOUT must not be negative"),
    ({"POCKETCNN_LOAD_IN_BACKGROUND": "perhaps"}, "POCKETCNN_LOAD_IN_BACKGROUND must be true or false"),
    ({"POCKETCNN_LOG_LEVEL": "loud"}, "POCKETCNN_LOG_LEVEL must be debug, info"),
    ({"POCKETCNN_MODEL_FORMAT": "tflite_int9"}, "POCKETCNN_MODEL_FORMAT must be one of savedmodel"),
])
def test_a_bad_setting_names_its_variable(environ, message):
    from serve.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match=message):
        Settings.from_env(environ)


def test_gunicorn_refuses_to_start_with_a_bad_setting(tmp_path):
    """The settings are read in gunicorn's master too: a bad value stops it at once, with the message."""
    import subprocess
    import sys
    from pathlib import Path

    from helpers import ROOT

    gunicorn = Path(sys.executable).parent / "gunicorn"
    result = subprocess.run([str(gunicorn), "-c", "python:serve.gunicorn_conf", "serve:create_app()"], cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin", "POCKETCNN_THREADS": "0",
                                 "POCKETCNN_MODEL_REPOSITORY": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "POCKETCNN_THREADS must be a positive integer, not 0" in result.stdout + result.stderr


def test_the_readme_lists_every_setting_with_its_default():
    from helpers import ROOT

    from serve.settings import markdown_table

    assert markdown_table() in (ROOT / "README.md").read_text(encoding="utf-8"), \
        "README's settings table is `python -m serve.settings`"
