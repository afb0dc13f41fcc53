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


# --- one small real model for the whole session: trained, then exported with every format -------

SESSION_TRAIN_ARGS = ["--train-limit", "10000", "--test-limit", "1000", "--epochs", "3", "--filters", "16,32",
                      "--dense-units", "64", "--train-sample-size", "3000"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished run folder: 3 epochs on 10 000 real Fashion-MNIST images (about 85 % accurate)."""
    from train.cli import main as train_main

    runs = tmp_path_factory.mktemp("session-runs")
    assert train_main([*SESSION_TRAIN_ARGS, "--runs-dir", str(runs), "--run-name", "session"]) == 0
    return runs / "session"


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory, trained_run):
    """A model repository holding version 1 of 'fashion_mnist', exported with every format (QAT and
    pruning included) by the real CLI."""
    from export.cli import main as export_main

    models = tmp_path_factory.mktemp("session-models")
    code = export_main([str(trained_run), "--models-dir", str(models), "--qat", "--prune", "--quiet"])
    assert code == 0, "the session model must pass every export gate"
    return models


@pytest.fixture(scope="session")
def published_version(model_repository):
    return model_repository / "fashion_mnist" / "1"
