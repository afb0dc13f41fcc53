""""This does not look like anything the model was trained on": the out-of-distribution score. numpy only.

Two signs, each scaled so that 0 is typical of the training data and 1 is the threshold; the score is the
larger one (never below 0), and an image is flagged when its score is above 1:

1. Its features (the activations the classifier's last layer reads) are far from the training images' in
   the relative Mahalanobis distance (Ren et al. 2021, "A Simple Fix to Mahalanobis Distance for Improving
   Near-OOD Detection"): the distance to the nearest class under one shared covariance, minus the distance
   under a single Gaussian of all training features. The first alone flags many unusual but in-distribution
   images (a garment photographed in poor light); the subtraction removes what every image shares. Class
   means and covariances come from the run's training sample; the threshold is the 95th percentile of the
   score on the validation images, so about 5 % of held-out images are flagged.
2. For product_photo models: the photo is not one garment on a plain background, which is what Fashion-MNIST is.
   contract/recipes.py measures it on the way (`photo_doubt`): the share of the photo's border that differs from
   the smooth background fitted to it (a street, a room, a landscape: no trim can make a product photo of them),
   over its limit; or 2 when nothing stands out from the background at all (nothing to classify).

The statistics live in ood.npz beside the model files (read with allow_pickle=False: arrays only).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DETECTOR_FILE = "ood.npz"
QUANTILE = 0.95           # of the validation images' feature score: the threshold
RIDGE = 1e-3              # added to the covariances' diagonal (relative to their mean variance): they must invert


@dataclass(frozen=True)
class Detector:
    class_means: np.ndarray   # (classes, d)
    class_factor: np.ndarray  # (d, d): L with L L^T = inverse of the shared class covariance
    global_mean: np.ndarray   # (d,)
    global_factor: np.ndarray  # (d, d)

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> "Detector":
        features = features.astype(np.float64)
        classes = sorted(set(int(v) for v in labels))
        means = np.stack([features[labels == c].mean(axis=0) for c in range(max(classes) + 1)])
        centred = features - means[labels]
        global_mean = features.mean(axis=0)
        return cls(means.astype(np.float32), _precision_factor(centred), global_mean.astype(np.float32),
                   _precision_factor(features - global_mean))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """The relative Mahalanobis distance of each row of `features` (higher: less like the training data)."""
        features = np.atleast_2d(features).astype(np.float32)
        projected = features @ self.joint_factor  # through both factors in one product: [class | global]
        width = self.class_factor.shape[1]
        to_class = ((projected[:, None, :width] - self.projected_means[None, :, :]) ** 2).sum(axis=-1).min(axis=1)
        to_all = ((projected[:, width:] - self.projected_global_mean) ** 2).sum(axis=-1)
        return to_class - to_all

    @functools.cached_property
    def projected_means(self) -> np.ndarray:
        """The class means through the class factor, once (the service scores every request with them)."""
        return self.class_means @ self.class_factor

    @functools.cached_property
    def joint_factor(self) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate([self.class_factor, self.global_factor], axis=1))

    @functools.cached_property
    def projected_global_mean(self) -> np.ndarray:
        return self.global_mean @ self.global_factor

    def save(self, path: Path) -> Path:
        np.savez(path, class_means=self.class_means, class_factor=self.class_factor, global_mean=self.global_mean,
                 global_factor=self.global_factor)
        return path


def _precision_factor(centred: np.ndarray) -> np.ndarray:
    covariance = centred.T @ centred / max(len(centred) - 1, 1)
    covariance += RIDGE * max(float(np.trace(covariance)) / len(covariance), 1e-12) * np.eye(len(covariance))
    return np.linalg.cholesky(np.linalg.inv(covariance)).astype(np.float32)


def load(path: Path) -> Detector:
    with np.load(path, allow_pickle=False) as stored:
        return Detector(stored["class_means"], stored["class_factor"], stored["global_mean"], stored["global_factor"])


@dataclass(frozen=True)
class Scale:
    """Where the validation images' feature distances sit: their median (score 0) and their QUANTILE (score 1)."""

    center: float
    threshold: float

    @classmethod
    def fit(cls, distances: np.ndarray, quantile: float = QUANTILE) -> "Scale":
        center, threshold = (float(v) for v in np.quantile(distances, [0.5, quantile]))
        return cls(center, max(threshold, center + 1e-6))

    def as_dict(self) -> dict:
        return {"center": self.center, "threshold": self.threshold}


def scores(distances: np.ndarray, scale: Scale | dict, photo_doubt=None) -> np.ndarray:
    """The out-of-distribution score of each image: the larger of its feature distance on the validation scale
    and its photo's doubt (product_photo), and at least 0 (as typical as the validation images' median, or more).
    An image is flagged when its score is above 1."""
    if isinstance(scale, dict):
        scale = Scale(float(scale["center"]), float(scale["threshold"]))
    scaled = (np.asarray(distances, dtype=np.float64) - scale.center) / (scale.threshold - scale.center)
    if photo_doubt is not None:
        scaled = np.maximum(scaled, np.asarray(photo_doubt, dtype=np.float64))
    return np.maximum(scaled, 0.0)
