"""Percentages that mean what they say: temperature scaling (Guo et al. 2017, "On Calibration of Modern
Neural Networks") and the expected calibration error. numpy only, so the tfmot worker uses it too.

A softmax network is usually over-confident. Dividing its logits by one number T > 1, fitted on held-out
validation images by the likelihood of their labels, makes "80 %" right about 80 % of the time, and leaves
the most likely class of every image as it was. The service's files compute softmax(logits / T) by having
the last Dense layer's kernel and bias divided by T: no new op, so phones and browsers get it too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits.astype(np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(scaled - top).sum(axis=1)) + top[:, 0]
    return float((log_sum - scaled[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The T that minimises the validation images' negative log-likelihood (golden-section search on log T:
    the likelihood is unimodal in T)."""
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = (negative_log_likelihood(logits, labels, np.exp(t)) for t in (c, d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = negative_log_likelihood(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = negative_log_likelihood(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2))


def calibration_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin of top-1 confidence: how many images, their mean confidence, their accuracy."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    found = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        found.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                      "confidence": float(confidence[members].mean()) if count else None,
                      "accuracy": float(correct[members].mean()) if count else None})
    return found


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the gap between confidence and accuracy, averaged over bins weighted by their images."""
    total = len(labels)
    return float(sum(b["count"] / total * abs(b["confidence"] - b["accuracy"])
                     for b in calibration_bins(probabilities, labels, bins) if b["count"])) if total else 0.0


def reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Accuracy against confidence per bin, one line per curve name ({name: (probabilities, labels)}), with the
    diagonal of perfect calibration and each curve's ECE in its legend; and how many images each bin holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.2), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    width = 1 / ECE_BINS
    for offset, (name, (probabilities, labels)) in enumerate(curves.items()):
        found = [b for b in calibration_bins(probabilities, labels) if b["count"]]
        ece = expected_calibration_error(probabilities, labels)
        top.plot([b["confidence"] for b in found], [b["accuracy"] for b in found], "o-", markersize=4,
                 label=f"{name} (ECE {ece * 100:.2f} %)")
        bottom.bar([b["low"] + width * (0.25 + 0.5 * offset) for b in found], [b["count"] for b in found],
                   width=width / 2, label=name)
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set(xlabel="top-1 confidence", ylabel="images", yscale="log")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
