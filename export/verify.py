"""Proof for every exported file: run it through the runtime that will really load it, on the run's
held-out test images, and compare with the model it came from."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.formats import Format
from contract.runtime import open_runner

# Op names that mean randomness (dropout, augmentation) is still in the graph.
RANDOM_OP = re.compile(r"random|rng|multinomial|truncatednormal|dropout|bernoulli", re.IGNORECASE)
LATENCY_RUNS = 200
DETERMINISM_RUNS = 5


def open_artifact(fmt: Format, path: Path):
    return open_runner(path, fmt.runtime)


def predict_batched(runner, images: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([runner.predict(images[i:i + batch]) for i in range(0, len(images), batch)])


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
    ops: list[str] = field(default_factory=list)
    random_ops: list[str] = field(default_factory=list)
    deterministic: bool | None = None
    failures: list[str] = field(default_factory=list)
    io: dict = field(default_factory=dict)
    source: str = "keras"                  # the model this file is compared with
    reference_outputs: np.ndarray | None = None

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


def verify(fmt: Format, path: Path, gates: dict, test_x: np.ndarray, test_y: np.ndarray,
           source_probs: np.ndarray, original_accuracy: float, reference_x: np.ndarray,
           source: str = "keras") -> Verdict:
    verdict = Verdict(fmt.key, source=source)
    runner = open_artifact(fmt, path)
    verdict.io = runner.describe()
    probs = predict_batched(runner, test_x)
    verdict.accuracy = float((probs.argmax(axis=1) == test_y).mean())
    verdict.accuracy_drop_points = round((original_accuracy - verdict.accuracy) * 100, 4)
    verdict.agreement, verdict.ties = agreement(source_probs, probs)
    verdict.max_abs_diff = float(np.abs(probs - source_probs).max())

    # Inference mode: no randomness left in the graph, and repeated runs are bit-identical.
    verdict.ops = graph_ops(fmt, path, runner)
    verdict.random_ops = [op for op in verdict.ops if RANDOM_OP.search(op)]
    runs = [runner.predict(reference_x) for _ in range(DETERMINISM_RUNS)]
    verdict.deterministic = all(np.array_equal(runs[0], r) for r in runs[1:])
    verdict.reference_outputs = runs[0]
    verdict.latency_ms = median_latency(runner, test_x[:1])

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
    drop = gates.get("max_accuracy_drop_points")
    if drop is not None and verdict.accuracy_drop_points > drop:
        verdict.fail(f"accuracy {verdict.accuracy * 100:.2f} % is {verdict.accuracy_drop_points:.2f} points below "
                     f"the Keras model's {original_accuracy * 100:.2f} % (limit {drop:g} points)")
    return verdict


def median_latency(runner, one_image: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    runner.predict(one_image)  # warm-up
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        runner.predict(one_image)
        timings.append(time.perf_counter() - started)
    return round(float(np.median(timings)) * 1000, 4)
