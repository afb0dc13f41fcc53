"""Proof for every exported file: run it through the runtime that will really load it, on the run's
held-out test images, and compare with the model it came from."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract import ood
from contract.formats import Format
from contract.ood import Detector
from contract.runtime import open_runner
from export.calibration import expected_calibration_error

# Op names that mean randomness (dropout, augmentation) is still in the graph.
RANDOM_OP = re.compile(r"random|rng|multinomial|truncatednormal|dropout|bernoulli", re.IGNORECASE)
LATENCY_RUNS = 200
DETERMINISM_RUNS = 5


def open_artifact(fmt: Format, path: Path, features: bool = False):
    return open_runner(path, fmt.runtime, features=features)


def predict_batched(runner, images: np.ndarray, batch: int = 256, with_features: bool = False):
    """Probabilities (and, with_features, the features too) for many images, a batch at a time."""
    if not with_features:
        return np.concatenate([runner.predict(images[i:i + batch]) for i in range(0, len(images), batch)])
    parts = [runner.predict_with_features(images[i:i + batch]) for i in range(0, len(images), batch)]
    return np.concatenate([p for p, _ in parts]), np.concatenate([f for _, f in parts])


def graph_ops(fmt: Format, path: Path, runner) -> list[str]:
    """Every operator type in the exported graph, read from the file (or the loaded serving graph)."""
    if fmt.runtime == "onnxruntime":
        import onnx

        return sorted({node.op_type for node in onnx.load(str(path)).graph.node})
    if fmt.runtime == "litert":
        return tflite_ops(path.read_bytes())
    return sorted(runner.op_types())


def tflite_ops(flatbuffer: bytes) -> list[str]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    ops = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        ops.add(f"CUSTOM:{custom.decode()}" if custom else names.get(builtin, str(builtin)))
    return sorted(ops)


@dataclass
class Verdict:
    key: str
    status: str = "passed"                 # passed | failed | error
    accuracy: float | None = None
    accuracy_drop_points: float | None = None
    agreement: float | None = None
    ties: int = 0
    max_abs_diff: float | None = None
    latency_ms: float | None = None
    ece: float | None = None               # expected calibration error on the held-out test images
    ood: dict = field(default_factory=dict)  # the file's out-of-distribution scale and flag rates
    ops: list[str] = field(default_factory=list)
    random_ops: list[str] = field(default_factory=list)
    deterministic: bool | None = None
    failures: list[str] = field(default_factory=list)
    io: dict = field(default_factory=dict)
    source: str = "keras"                  # the model this file is compared with
    reference_outputs: np.ndarray | None = None
    reference_ood: np.ndarray | None = None  # the reference images' out-of-distribution scores

    def fail(self, message: str) -> None:
        self.status = "failed"
        self.failures.append(message)


def agreement(source: np.ndarray, candidate: np.ndarray, tie: float = 1e-6) -> tuple[float, int]:
    """Share of images with the same top-1 class. An image whose top two classes the source scores
    within `tie` of each other is a tie: either answer agrees (such images are counted and reported)."""
    source_top, candidate_top = source.argmax(axis=1), candidate.argmax(axis=1)
    rows = np.arange(len(source))
    is_tie = np.abs(source[rows, source_top] - source[rows, candidate_top]) <= tie
    same = (source_top == candidate_top) | is_tie
    return float(same.mean()) if len(same) else 1.0, int((is_tie & (source_top != candidate_top)).sum())


@dataclass(frozen=True)
class HeldOut:
    """The run's held-out images every file is checked on."""

    test_x: np.ndarray
    test_y: np.ndarray
    validation_x: np.ndarray    # the out-of-distribution threshold is set on them, file by file
    reference_x: np.ndarray     # the reference images (as the service decodes them)
    source_accuracy: float      # of the calibrated Keras model, on test_x


@dataclass(frozen=True)
class Expected:
    """What a file must reproduce: the outputs of the model it was converted from, and its detector."""

    name: str                       # in words: keras, qat fine-tuned model...
    test_probs: np.ndarray
    detector: Detector | None = None  # out-of-distribution statistics of that model's features
    test_flags: np.ndarray | None = None  # that model's own out-of-distribution flags on the test images


def verify(fmt: Format, path: Path, gates: dict, held: HeldOut, expected: Expected) -> Verdict:
    verdict = Verdict(fmt.key, source=expected.name)
    runner = open_artifact(fmt, path, features=expected.detector is not None)
    verdict.io = runner.describe()
    if expected.detector is not None:
        probs, features = predict_batched(runner, held.test_x, with_features=True)
        _, validation_features = predict_batched(runner, held.validation_x, with_features=True)
        check_ood(verdict, expected, held, expected.detector.distance(features),
                  expected.detector.distance(validation_features))
    else:
        probs = predict_batched(runner, held.test_x)
    verdict.accuracy = float((probs.argmax(axis=1) == held.test_y).mean())
    verdict.accuracy_drop_points = round((held.source_accuracy - verdict.accuracy) * 100, 4)
    verdict.agreement, verdict.ties = agreement(expected.test_probs, probs)
    verdict.max_abs_diff = float(np.abs(probs - expected.test_probs).max())
    verdict.ece = expected_calibration_error(probs, held.test_y)

    # Inference mode: no randomness left in the graph, and repeated runs are bit-identical.
    verdict.ops = graph_ops(fmt, path, runner)
    verdict.random_ops = [op for op in verdict.ops if RANDOM_OP.search(op)]
    runs = [runner.predict(held.reference_x) for _ in range(DETERMINISM_RUNS)]
    verdict.deterministic = all(np.array_equal(runs[0], r) for r in runs[1:])
    verdict.reference_outputs = runs[0]
    if expected.detector is not None:
        _, reference_features = runner.predict_with_features(held.reference_x)
        verdict.reference_ood = ood.scores(expected.detector.distance(reference_features), ood.Scale(
            verdict.ood["center"], verdict.ood["threshold"]))
    verdict.latency_ms = median_latency(runner, held.test_x[:1])

    if verdict.random_ops:
        verdict.fail(f"random ops in the exported graph: {', '.join(verdict.random_ops)}")
    if not verdict.deterministic:
        verdict.fail(f"{DETERMINISM_RUNS} runs on the same input gave different outputs")
    minimum = gates.get("min_agreement")
    if minimum is not None and verdict.agreement < minimum:
        verdict.fail(f"top-1 agreement {verdict.agreement * 100:.2f} % < {minimum * 100:.2f} % "
                     f"(short by {(minimum - verdict.agreement) * 100:.2f} points)")
    limit = gates.get("max_abs_diff")
    if limit is not None and verdict.max_abs_diff > limit:
        ratio = f" ({verdict.max_abs_diff / limit:.1f}x the limit)" if limit > 0 else ""
        verdict.fail(f"max |probability difference| {verdict.max_abs_diff:.3g} > {limit:.3g}{ratio}")
    max_ece = gates.get("max_ece")
    if max_ece is not None and verdict.ece > max_ece:
        verdict.fail(f"expected calibration error {verdict.ece * 100:.2f} % > {max_ece * 100:.2f} % on the held-out "
                     "test images: its percentages are not calibrated")
    drop = gates.get("max_accuracy_drop_points")
    if drop is not None and verdict.accuracy_drop_points > drop:
        verdict.fail(f"accuracy {verdict.accuracy * 100:.2f} % is {verdict.accuracy_drop_points:.2f} points below "
                     f"the Keras model's {held.source_accuracy * 100:.2f} % (limit {drop:g} points)")
    max_rate = gates.get("max_ood_test_rate")
    if verdict.ood and max_rate is not None and verdict.ood["test_flag_rate"] > max_rate:
        verdict.fail(f"{verdict.ood['test_flag_rate'] * 100:.1f} % of the held-out test images are flagged as out of "
                     f"distribution (limit {max_rate * 100:.1f} %; about 5 % expected): the detector does not "
                     "generalise from the validation images")
    min_ood_agreement = gates.get("min_ood_agreement")
    if verdict.ood and min_ood_agreement is not None and verdict.ood["agreement"] < min_ood_agreement:
        verdict.fail(f"out-of-distribution flags agree with the source model's on {verdict.ood['agreement'] * 100:.1f} "
                     f"% of the test images (< {min_ood_agreement * 100:.1f} %): the features read from the file are "
                     "not the model's")
    return verdict


def check_ood(verdict: Verdict, expected: Expected, held: HeldOut, test_distances: np.ndarray,
              validation_distances: np.ndarray) -> None:
    """The file's own scale of feature distances (from its validation images), its flag rate on the test images,
    and how often its flags agree with the source model's."""
    scale = ood.Scale.fit(validation_distances)
    flags = ood.scores(test_distances, scale) > 1
    verdict.ood = {**scale.as_dict(), "validation_flag_rate": float((ood.scores(validation_distances, scale) > 1)
                                                                     .mean()),
                   "test_flag_rate": float(flags.mean()),
                   "agreement": float((flags == expected.test_flags).mean()) if expected.test_flags is not None
                   else 1.0}


def median_latency(runner, one_image: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    runner.predict(one_image)  # warm-up
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        runner.predict(one_image)
        timings.append(time.perf_counter() - started)
    return round(float(np.median(timings)) * 1000, 4)
