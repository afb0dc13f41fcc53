"""A tiny published model version, built in a second without TensorFlow, for the tests of the HTTP contract.

A linear classifier on real Fashion-MNIST pixels (ridge regression on training images, softmax on top),
written as an ONNX graph with onnx.helper (Reshape, Mul, MatMul, Add, Softmax; a few KB of code, 31 KB of
weights) and published through export's own checking and publishing code: verified by ONNX Runtime against
the same function computed in numpy, with a manifest, reference samples and labels like any exported version.
It runs wherever the serving install does (onnx is in the dev extra), so /predict, the TF Serving routes,
errors, metrics and OpenAPI are tested in seconds; the real model's tests keep accuracy and parity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_FORMAT = "onnx"  # the only file of the tiny version: serve it with MODEL_FORMAT=onnx
HEIGHT, WIDTH, CHANNELS = 28, 28, 1


def fit_linear(x: np.ndarray, y: np.ndarray, classes: int, ridge: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of a ridge regression onto one-hot targets, scaled so the softmax is decisive."""
    features = x.reshape(len(x), -1).astype(np.float64) / 255.0
    design = np.hstack([features, np.ones((len(x), 1))])
    targets = np.eye(classes)[y]
    solution = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), design.T @ targets)
    weights, bias = solution[:-1] * 12.0, solution[-1] * 12.0
    return weights.astype(np.float32), bias.astype(np.float32)


def probabilities(images: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """What the ONNX graph computes, in numpy."""
    logits = (images.reshape(len(images), -1).astype(np.float32) * np.float32(1 / 255)) @ weights + bias
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def onnx_bytes(weights: np.ndarray, bias: np.ndarray) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    classes = weights.shape[1]
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
         helper.make_node("Mul", ["flat", "scale"], ["scaled"]),
         helper.make_node("MatMul", ["scaled", "weights"], ["product"]),
         helper.make_node("Add", ["product", "bias"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", HEIGHT, WIDTH, CHANNELS])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(np.array([-1, HEIGHT * WIDTH * CHANNELS], np.int64), "flat_shape"),
                     numpy_helper.from_array(np.array([1 / 255], np.float32), "scale"),
                     numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pocketcnn-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def publish_tiny_model(repository: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                       labels: list[str], name: str = "fashion_mnist") -> Path:
    """Fit, write, verify and publish the next version of `name` in `repository`; returns its folder."""
    from contract.formats import FORMATS
    from contract.manifest import ModelRepository
    from export import publish, verify
    from export.options import ExportOptions
    from export.pipeline import ComparedModel, choose_references, format_table, publish_version

    weights, bias = fit_linear(*train, classes=len(labels))
    test_x, test_y = test
    source = probabilities(test_x, weights, bias)
    accuracy = float((source.argmax(axis=1) == test_y).mean())
    references = choose_references(source, test_y, len(labels))
    options = ExportOptions(formats=TINY_FORMAT)
    fmt = FORMATS[TINY_FORMAT]
    repo = ModelRepository(repository)
    staging = publish.open_staging(repo, name)
    path = staging / fmt.file
    path.write_bytes(onnx_bytes(weights, bias))
    verdict = verify.verify(fmt, path, options.gates_for(fmt.family), test_x, test_y, source, accuracy,
                            test_x[references])
    assert verdict.status == "passed", verdict.failures
    compared = {"keras": ComparedModel("keras", source, source[references])}
    about = {"run": "tests/tiny_model.py", "model_file": None, "model_sha256": None, "accuracy": accuracy,
             "test_images": int(len(test_x)), "training": {"dataset": "fashion_mnist", "model": "ridge regression"}}
    return publish_version(repo, name, staging, labels, (HEIGHT, WIDTH, CHANNELS), about, [verdict], compared,
                           options, test_x[references], test_y[references], format_table([verdict], staging, accuracy))
