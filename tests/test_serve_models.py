"""Every model of the repository, served by name: /predict's default and ?model=, each model's own version policy,
version labels, self-check and pick-up, a refused model refused alone, /readyz and the V2 per-model ready routes.
On copies of the tiny model (Flask's test client), and worker memory with three real models under gunicorn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import copy_version, doctor_weights, png_bytes, served_artifact
from tiny_model import TINY_FORMAT

from contract import read_manifest
from contract.files import sha256_file
from serve import create_app
from serve.testing import GunicornServer


def make_app(repository, **settings):
    return create_app({"MODEL_REPOSITORY": str(repository), "MODEL_FORMAT": TINY_FORMAT, "LOAD_IN_BACKGROUND": False,
                       "POLL_SECONDS": 0, **settings})


def broken_copy(tiny_version, repository, name: str, version: int = 1):
    """A version whose weights were changed and its manifest re-signed: only the self-check can refuse it."""
    target = copy_version(tiny_version, repository, version, name=name)
    key, file = served_artifact(target)
    doctor_weights(target / file)
    manifest = read_manifest(target)
    manifest["artifacts"][key]["sha256"] = sha256_file(target / file)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def serving_config(repository, name: str, **config) -> None:
    (repository / name / "serving.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def photo(fashion_mnist_test):
    return png_bytes(fashion_mnist_test[0][0])


def test_every_model_is_served_by_name_and_predict_serves_the_default(tmp_path, tiny_version, photo):
    for name in ("shoes", "bags", "coats"):
        copy_version(tiny_version, tmp_path, 1, name=name)
    client = make_app(tmp_path).test_client()
    default = client.post("/predict", data=photo, content_type="image/png").get_json()
    assert default["model"]["name"] == "bags", "without POCKETCNN_MODEL_NAME: the first by name"
    chosen = client.post("/predict?model=shoes", data=photo, content_type="image/png").get_json()
    assert chosen["model"]["name"] == "shoes" and chosen["predictions"] == default["predictions"]
    missing = client.post("/predict?model=hats", data=photo, content_type="image/png")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "model_not_found"
    assert "bags, coats, shoes" in missing.get_json()["error"]["message"]
    b64 = base64_of(photo)
    for name in ("shoes", "bags", "coats"):
        assert client.post(f"/v1/models/{name}:predict", json={"instances": [{"b64": b64}]}).status_code == 200
        assert client.get(f"/v2/models/{name}/ready").status_code == 200
        assert client.get(f"/v2/models/{name}").get_json()["name"] == name
    assert make_app(tmp_path, MODEL_NAME="coats").test_client().post(
        "/predict", data=photo, content_type="image/png").get_json()["model"]["name"] == "coats"
    models = client.get("/model").get_json()["models"]
    assert sorted(models) == ["bags", "coats", "shoes"] and all(m["state"] == "ready" for m in models.values())


def base64_of(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_a_model_that_fails_its_self_check_is_refused_alone(tmp_path, tiny_version, photo):
    copy_version(tiny_version, tmp_path, 1, name="good")
    broken_copy(tiny_version, tmp_path, "broken")
    app = make_app(tmp_path, MODEL_NAME="good")
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200, "a model with no loadable version does not hold the others back"
    assert ready.get_json()["models"] == {"broken": "refused", "good": "ready"}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/good/ready").status_code == 200
    refused = client.get("/v2/models/broken/ready")
    assert refused.status_code == 503 and "self-check failed" in refused.get_json()["error"]
    assert client.post("/predict?model=broken", data=photo, content_type="image/png").status_code == 503
    assert client.post("/predict", data=photo, content_type="image/png").get_json()["model"]["name"] == "good"
    status = client.get("/v1/models/broken").get_json()["model_version_status"]
    assert status == [{"version": "1", "state": "END", "status": {
        "error_code": "FAILED_PRECONDITION", "error_message": status[0]["status"]["error_message"]}}]
    assert "self-check failed" in status[0]["status"]["error_message"]
    assert "broken/1" in client.get("/model").get_json()["refused_versions"]


def test_readyz_is_503_while_no_model_serves(tmp_path, tiny_version):
    broken_copy(tiny_version, tmp_path, "broken")
    client = make_app(tmp_path).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503 and "self-check failed" in response.get_json()["error"]["message"]
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/health/live").status_code == 200


def test_each_model_has_its_own_version_policy(tmp_path, tiny_version):
    for name in ("newest", "best"):
        copy_version(tiny_version, tmp_path, 1, accuracy=0.95, name=name)
        copy_version(tiny_version, tmp_path, 2, accuracy=0.80, name=name)
    serving_config(tmp_path, "newest", version_policy="latest")
    client = make_app(tmp_path).test_client()
    models = client.get("/model").get_json()["models"]
    assert (models["newest"]["default_version"], models["newest"]["policy"]) == (2, "latest")
    assert (models["best"]["default_version"], models["best"]["policy"]) == (1, "best")
    assert client.get("/v2/models/newest").get_json()["versions"] == ["2"]


def test_version_labels_serve_their_versions_and_every_version_has_a_status(tmp_path, tiny_version, photo):
    for version, accuracy in ((1, 0.95), (2, 0.80), (3, 0.70)):
        copy_version(tiny_version, tmp_path, version, accuracy=accuracy, name="shoes")
    serving_config(tmp_path, "shoes", version_labels={"stable": 1, "canary": 2})
    client = make_app(tmp_path).test_client()
    body = {"instances": [{"b64": base64_of(photo)}]}
    stable = client.post("/v1/models/shoes/labels/stable:predict", json=body)
    canary = client.post("/v1/models/shoes/labels/canary:classify", json={"examples": [{"image": {"b64":
                                                                                                base64_of(photo)}}]})
    assert stable.status_code == 200 and canary.status_code == 200
    assert client.get("/v1/models/shoes/labels/canary/metadata").get_json()["model_spec"]["version"] == "2"
    assert client.get("/v1/models/shoes/labels/canary").get_json()["model_version_status"][0]["version"] == "2"
    unknown = client.post("/v1/models/shoes/labels/beta:predict", json=body)
    assert unknown.status_code == 400 and "Unrecognized servable version label 'beta'" in unknown.get_json()["error"]
    assert "canary, stable" in unknown.get_json()["error"]
    states = {s["version"]: s["state"] for s in client.get("/v1/models/shoes").get_json()["model_version_status"]}
    assert states == {"3": "END", "2": "AVAILABLE", "1": "AVAILABLE"}
    assert client.get("/v1/models/shoes/versions/3").get_json()["model_version_status"][0]["state"] == "END"
    assert client.get("/v1/models/shoes/versions/9").status_code == 404
    assert client.post("/v1/models/shoes/versions/3:predict", json=body).status_code == 404, "END: not served"
    assert client.get("/v2/models/shoes").get_json()["versions"] == ["1", "2"]
    assert client.get("/v2/models/shoes/versions/2/ready").status_code == 200
    assert client.get("/v2/models/shoes/versions/3/ready").status_code == 404


def test_a_bad_serving_file_refuses_that_model_alone(tmp_path, tiny_version):
    copy_version(tiny_version, tmp_path, 1, name="shoes")
    copy_version(tiny_version, tmp_path, 1, name="bags")
    (tmp_path / "shoes" / "serving.json").write_text('{"version_policy": "newest"}')
    client = make_app(tmp_path).test_client()
    assert client.get("/readyz").status_code == 200
    refused = client.get("/v2/models/shoes/ready")
    assert refused.status_code == 503 and "serving.json" in refused.get_json()["error"]
    assert client.get("/v2/models/bags/ready").status_code == 200


def test_each_model_picks_up_its_own_new_versions(tmp_path, tiny_version, photo):
    copy_version(tiny_version, tmp_path, 1, accuracy=0.80, name="shoes")
    copy_version(tiny_version, tmp_path, 1, accuracy=0.80, name="bags")
    app = make_app(tmp_path)
    manager, client = app.extensions["pocketcnn"], app.test_client()
    copy_version(tiny_version, tmp_path, 2, accuracy=0.95, name="bags")
    broken_copy(tiny_version, tmp_path, "shoes", version=2)
    with open(tmp_path / "shoes" / "2" / "manifest.json") as handle:
        manifest = json.load(handle)
    manifest["artifacts"][TINY_FORMAT]["accuracy"] = 0.99  # better on paper
    (tmp_path / "shoes" / "2" / "manifest.json").write_text(json.dumps(manifest))
    manager.refresh()
    versions = {name: client.get(f"/v2/models/{name}").get_json()["versions"] for name in ("shoes", "bags")}
    assert versions == {"shoes": ["1"], "bags": ["2"]}, "the broken version never replaces a working one"
    assert "shoes/2" in manager.failures
    copy_version(tiny_version, tmp_path, 1, name="coats")  # a new model appears
    manager.refresh()
    assert client.post("/predict?model=coats", data=photo, content_type="image/png").status_code == 200


@pytest.mark.slow
def test_worker_memory_with_three_small_models(tmp_path, published_version, fashion_mnist_test):
    """Three real (small) models in one repository under gunicorn: each worker loads all three (default format,
    detectors, self-checks) and stays within 200 MB."""
    for name in ("fashion_mnist", "shoes", "bags"):
        copy_version(published_version, tmp_path, 1, name=name)
    photos = [png_bytes(image) for image in fashion_mnist_test[0][:20]]
    with GunicornServer(tmp_path, env={"POCKETCNN_POLL_SECONDS": "0"}) as server:
        server.wait_every_worker(r"serving bags v1")
        server.wait_every_worker(r"serving shoes v1")
        import urllib.request

        for name in ("fashion_mnist", "shoes", "bags"):
            for photo in photos:
                request = urllib.request.Request(f"{server.url}/predict?model={name}", data=photo,
                                                 headers={"Content-Type": "image/png"})
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
                    assert json.load(response)["model"]["name"] == name
        sizes = server.worker_rss_mb()
        print(f"\nworker memory with three models: {', '.join(f'{v:.0f} MB' for v in sizes)}")
        assert len(sizes) == 2 and max(sizes) <= 200
        assert np.all(np.asarray(sizes) > 0)
