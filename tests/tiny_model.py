"""A tiny published model version, built in a second without TensorFlow, for the tests of the HTTP contract.

A linear classifier on real Fashion-MNIST pixels (ridge regression on training images, softmax on top, its
temperature fitted), written as an ONNX graph with onnx.helper (Reshape, Mul, MatMul, Add, Softmax; a few KB of
code, 31 KB of weights; its second output, `features`, is what its last layer reads: the scaled pixels) and
published through export's own checking and publishing code: verified by ONNX Runtime against the same function
computed in numpy, with a manifest, an out-of-distribution detector, reference samples and labels like any
exported version.
It runs wherever the serving install does (onnx is in the dev extra), so /predict, the TF Serving routes,
errors, metrics and OpenAPI are tested in seconds; the real model's tests keep accuracy and parity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_FORMAT = "onnx"  # the only file of the tiny version: serve it with MODEL_FORMAT=onnx
HEIGHT, WIDTH, CHANNELS = 28, 28, 1


def fit_linear(x: np.ndarray, y: np.ndarray, classes: int, ridge: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of a ridge regression onto one-hot targets (its outputs are the logits), on the first
    two thirds of the images; the temperature that calibrates their softmax is fitted on the last third (export's
    own temperature scaling) and divided into them."""
    from export.calibration import fit_temperature

    fit = len(x) * 2 // 3
    features = x.reshape(len(x), -1).astype(np.float64) / 255.0
    design = np.hstack([features, np.ones((len(x), 1))])
    targets = np.eye(classes)[y[:fit]]
    solution = np.linalg.solve(design[:fit].T @ design[:fit] + ridge * np.eye(design.shape[1]),
                               design[:fit].T @ targets)
    temperature = fit_temperature(design[fit:] @ solution, y[fit:])
    weights, bias = solution[:-1] / temperature, solution[-1] / temperature
    return weights.astype(np.float32), bias.astype(np.float32)


def features(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) * np.float32(1 / 255)


def probabilities(images: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """What the ONNX graph computes, in numpy."""
    logits = features(images) @ weights + bias
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
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
         helper.make_node("Identity", ["scaled"], ["features"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", HEIGHT, WIDTH, CHANNELS])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", HEIGHT * WIDTH * CHANNELS])],
        initializer=[numpy_helper.from_array(np.array([-1, HEIGHT * WIDTH * CHANNELS], np.int64), "flat_shape"),
                     numpy_helper.from_array(np.array([1 / 255], np.float32), "scale"),
                     numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pocketcnn-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def publish_tiny_model(repository: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                       labels: list[str], name: str = "fashion_mnist") -> Path:
    """Fit, write, verify and publish the next version of `name` in `repository`; returns its folder. The first
    two thirds of `train` fit the weights, the last third the temperature and the detector's scale."""
    from contract.formats import FORMATS
    from contract.manifest import ModelRepository
    from contract.recipes import InputRecipe
    from export import publish, verify
    from export.options import ExportOptions
    from export.pipeline import ModelCard, choose_references, compared_model, format_table, ood_summary, publish_version

    weights, bias = fit_linear(*train, classes=len(labels))
    fit = len(train[0]) * 2 // 3
    test_x, test_y = test
    source = probabilities(test_x, weights, bias)
    accuracy = float((source.argmax(axis=1) == test_y).mean())
    references = choose_references(source, test_y, len(labels))
    options = ExportOptions(formats=TINY_FORMAT, max_ece=0.05)  # 1,000 test images: the ECE is this noisy
    fmt = FORMATS[TINY_FORMAT]
    repo = ModelRepository(repository)
    staging = publish.open_staging(repo, name)
    path = staging / fmt.file
    path.write_bytes(onnx_bytes(weights, bias))
    compared = {"keras": compared_model("keras", source, source[references],
                                        {"train": features(train[0][:fit]), "validation": features(train[0][fit:]),
                                         "test": features(test_x)}, train[1][:fit])}
    held = verify.HeldOut(test_x, test_y, train[0][fit:], test_x[references], accuracy)
    verdict = verify.verify(fmt, path, options.gates_for(fmt.family), held, compared["keras"].expected())
    assert verdict.status == "passed", verdict.failures
    about = {"run": "tests/tiny_model.py", "model_file": None, "model_sha256": None, "accuracy": accuracy,
             "test_images": int(len(test_x)), "training": {"dataset": "fashion_mnist", "model": "ridge regression"}}
    recipe = InputRecipe("product_photo")
    card = ModelCard(name, labels, (HEIGHT, WIDTH, CHANNELS), recipe, about, ood=ood_summary(recipe, compared))
    return publish_version(repo, staging, card, [verdict], compared, options, test_x[references], test_y[references],
                           format_table([verdict], staging, accuracy))
