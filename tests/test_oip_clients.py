"""The Open Inference Protocol (V2) routes, proven with clients nobody here wrote: Triton's tritonclient[http] and the
KServe SDK's REST client, in their own environment (.venv-clients, `make clients`; `make test` makes it), against
real gunicorn on loopback. Their answers on held-out Fashion-MNIST images agree with /predict and with TF Serving's
:predict."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.request

import numpy as np
import pytest
from helpers import ROOT, answers, png_bytes

CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
HELD_OUT = 20  # the last test images: the tiny model was fitted and calibrated on others


@pytest.fixture(scope="module")
def clients_python():
    if not CLIENTS_PYTHON.exists():
        pytest.skip("no .venv-clients: make clients (make test makes it)")
    return CLIENTS_PYTHON


@pytest.fixture(scope="module")
def held_out(fashion_mnist_test, tmp_path_factory):
    x, _ = fashion_mnist_test
    x = x[-HELD_OUT:]
    folder = tmp_path_factory.mktemp("oip-clients")
    np.save(folder / "pixels.npy", x[:4])
    paths = []
    for index, image in enumerate(x):
        paths.append(folder / f"held_out_{index}.png")
        paths[-1].write_bytes(png_bytes(image))
    return x, paths, folder / "pixels.npy"


@pytest.fixture(scope="module")
def report(clients_python, tiny_server, held_out):
    _, paths, pixels = held_out
    done = subprocess.run([str(clients_python), str(ROOT / "tests" / "oip_clients.py"), tiny_server.url,
                           "fashion_mnist", str(pixels), *map(str, paths)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def tf_serving_probabilities(url: str, paths) -> np.ndarray:
    body = json.dumps({"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in paths]}).encode()
    request = urllib.request.Request(url + "/v1/models/fashion_mnist:predict", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return np.asarray(json.load(response)["predictions"])


def test_tritonclient_health_metadata_and_errors(report):
    found = report["tritonclient"]
    assert (found["live"], found["ready"], found["model_ready"], found["unknown_model_ready"]) == (True, True, True,
                                                                                                  False)
    assert found["server_metadata"]["name"] == "pocketcnn"
    assert {"binary_tensor_data", "classification"} <= set(found["server_metadata"]["extensions"])
    metadata = found["model_metadata"]
    assert metadata["name"] == "fashion_mnist" and metadata["versions"] == ["1"]
    assert {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]} == {
        "image": ("BYTES", [-1]), "pixels": ("UINT8", [-1, 28, 28, 1])}
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    errors = found["errors"]
    assert errors["unknown model"]["status"] == "404" and "no_such_model" in errors["unknown model"]["message"]
    assert errors["not an image"]["status"] == "400" and "not a JPEG, PNG" in errors["not an image"]["message"]
    assert errors["unknown version"]["status"] == "404" and "Version 99" in errors["unknown version"]["message"]


def test_every_client_and_input_form_agrees_with_predict_and_tf_serving(report, tiny_server, held_out):
    x, paths, _ = held_out
    triton, kserve = report["tritonclient"], report["kserve"]
    reference = tf_serving_probabilities(tiny_server.url, paths)
    binary = np.asarray(triton["image_probabilities"], dtype=np.float32)
    assert binary.shape == (HELD_OUT, 10)
    assert np.abs(binary - reference).max() < 1e-6  # TF Serving's JSON rounds to 7 decimals
    for name, values in (("tritonclient, no outputs named", triton["default_output"]),
                         ("KServe, binary BYTES", kserve["image_probabilities"]),
                         ("KServe, base64 in JSON", kserve["base64_probabilities"])):
        assert np.array_equal(np.asarray(values, dtype=np.float32), binary), name
    for name, values in (("tritonclient, UINT8 pixels", triton["pixels_probabilities"]),
                         ("tritonclient, FP32 pixels in JSON", triton["pixels_json_probabilities"]),
                         ("KServe, UINT8 pixels in JSON", kserve["pixels_probabilities"])):
        got = np.asarray(values, dtype=np.float32)
        assert np.abs(got - binary[:len(got)]).max() < 1e-6, name  # a PNG of the pixels gives the pixels back
    for answer, row in zip(answers(tiny_server.url, [p.read_bytes() for p in paths]), binary, strict=True):
        percents = {p["index"]: p["percent"] for p in answer["predictions"]}
        assert max(abs(percents[i] - row[i] * 100) for i in range(10)) <= 0.0101, "percentages of the same answer"
        assert answer["predictions"][0]["index"] == int(row.argmax())


def test_triton_classification_extension_gives_score_index_label(report):
    from train.data import FASHION_MNIST_LABELS

    binary = np.asarray(report["tritonclient"]["image_probabilities"])
    for row, strings in zip(binary, report["tritonclient"]["classification"], strict=True):
        assert len(strings) == 3
        parsed = [s.split(":", 2) for s in strings]
        indices = [int(index) for _, index, _ in parsed]
        assert indices == list(np.argsort(-row, kind="stable")[:3])
        assert [float(score) for score, _, _ in parsed] == pytest.approx(row[indices], abs=1e-6)
        assert [label for _, _, label in parsed] == [FASHION_MNIST_LABELS[i] for i in indices]


def test_kserve_health_and_errors(report):
    found = report["kserve"]
    assert (found["live"], found["ready"], found["model_ready"], found["unknown_model_ready"]) == (True, True, True,
                                                                                                  False)
    assert found["unknown_model_error"]["status"] == 404
    assert "no_such_model" in found["unknown_model_error"]["message"]
