"""Shared fixtures: real Fashion-MNIST images, and one small model trained, exported and served once
per test session (on slices of the real data, so the suite stays fast)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers import FASHION_MNIST_DIR, png_bytes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fashion_mnist_test():
    """The real Fashion-MNIST test images (10 000 x 28 x 28 x 1 uint8) and labels."""
    from train.data import load_fashion_mnist

    _, _, x_test, y_test = load_fashion_mnist(FASHION_MNIST_DIR)
    return x_test, y_test


@pytest.fixture(scope="session")
def real_png(fashion_mnist_test) -> bytes:
    """A real 28x28 greyscale Fashion-MNIST image as PNG bytes."""
    return png_bytes(fashion_mnist_test[0][0])


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
