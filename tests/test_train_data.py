"""Datasets: Fashion-MNIST IDX files, folders of real photos, CIFAR-10 batches, and every bad-data error."""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import shutil
from dataclasses import replace

import numpy as np
import pytest
from helpers import FASHION_MNIST_DIR, encode, to_picture
from PIL import Image

from train.config import TrainConfig
from train.data import (
    FASHION_MNIST_LABELS,
    DataError,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    read_idx,
)


def test_fashion_mnist_is_the_real_data():
    x_train, y_train, x_test, y_test = load_fashion_mnist(FASHION_MNIST_DIR)
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == np.uint8 and set(np.unique(y_test)) == set(range(10))
    assert np.bincount(y_test).tolist() == [1000] * 10  # the real test set is balanced
    assert 60 < x_train.mean() < 90  # dark background, bright garments: not noise, not blank


def test_fashion_mnist_split_is_deterministic_and_labelled():
    config = TrainConfig(train_limit=500, test_limit=100)
    first, second = load_dataset(config), load_dataset(config)
    assert first.labels == FASHION_MNIST_LABELS
    assert np.array_equal(first.x_train, second.x_train) and np.array_equal(first.x_val, second.x_val)
    other = load_dataset(replace(config, seed=7))
    assert not np.array_equal(first.x_train, other.x_train)
    assert len(first.x_train) == 500 and len(first.x_test) == 100


def test_missing_fashion_mnist_names_the_install_command(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    data = gzip.open(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read()
    (tmp_path / "cut.gz").write_bytes(gzip.compress(data[:5000]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "cut.gz")


def test_fashion_mnist_as_rgb_at_another_size_goes_through_the_image_contract():
    dataset = load_dataset(TrainConfig(train_limit=50, test_limit=20, color_mode="rgb", image_size=32))
    assert dataset.x_train.shape[1:] == (32, 32, 3)
    assert np.array_equal(dataset.x_train[..., 0], dataset.x_train[..., 2])  # grey stays grey


# --- a folder of photos (the Teachable Machine case) ------------------------------------------------

@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, fashion_mnist_test):
    """Three classes of real Fashion-MNIST pictures written as PNG and JPEG of mixed sizes and colour
    modes (as phones and cameras would give them), plus one corrupt file and one text file."""
    x, y = fashion_mnist_test
    root = tmp_path_factory.mktemp("photos")
    classes = {0: "t-shirt", 1: "trouser", 7: "sneaker"}
    rng = np.random.default_rng(0)
    for label, name in classes.items():
        (root / name).mkdir()
        for i, index in enumerate(np.flatnonzero(y == label)[:40]):
            picture = to_picture(x[index])
            size = int(rng.choice([28, 64, 150]))
            picture = picture.resize((size, int(size * rng.choice([1.0, 1.33]))), Image.Resampling.BILINEAR)
            mode = ["L", "RGB", "RGBA", "P"][i % 4]
            picture = picture.convert(mode)
            if i % 2 == 0 and mode in ("L", "RGB"):
                (root / name / f"{i:03d}.jpg").write_bytes(encode(picture, "JPEG", quality=90))
            else:
                (root / name / f"{i:03d}.png").write_bytes(encode(picture, "PNG"))
    good = (root / "sneaker" / "001.png").read_bytes()
    (root / "sneaker" / "broken.png").write_bytes(good[: len(good) // 3])
    (root / "trouser" / "notes.txt").write_text("not an image")
    return root, list(classes.values())


def test_folder_dataset_reads_mixed_photos_and_reports_skipped_files(photo_folder, caplog):
    root, names = photo_folder
    with caplog.at_level(logging.WARNING):
        dataset = load_image_folder(root, 32, 1, 0.15, seed=1)
    assert dataset.labels == sorted(names)
    assert sorted(os.path.basename(p) for p in dataset.skipped) == ["broken.png", "notes.txt"]
    assert "Skipped 2 of 122 files" in caplog.text
    assert dataset.x_train.shape[1:] == (32, 32, 1)
    total = len(dataset.x_train) + len(dataset.x_val) + len(dataset.x_test)
    assert total == 120
    assert sorted(np.bincount(dataset.y_test).tolist()) == [6, 6, 6]  # stratified: 15 % of each class
    again = load_image_folder(root, 32, 1, 0.15, seed=1)
    assert np.array_equal(dataset.x_test, again.x_test)  # deterministic by seed


def test_folder_dataset_trains(photo_folder, tmp_path):
    from train.run import train

    root, _ = photo_folder
    config = TrainConfig(dataset="folder", data_dir=str(root), image_size=32, color_mode="grayscale",
                         validation_fraction=0.15,
                         epochs=2, batch_size=16, filters=(8, 16), dense_units=32,
                         runs_dir=str(tmp_path), run_name="folder-run", train_sample_size=50)
    run_dir = train(config)
    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sorted(os.path.basename(p) for p in metrics["skipped_files"]) == ["broken.png", "notes.txt"]
    assert (run_dir / "labels.txt").read_text().split("\n")[:3] == ["sneaker", "t-shirt", "trouser"]
    assert metrics["test_images"] == 18


def _make_classes(root, counts: dict[str, int], source: bytes):
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(source)


@pytest.mark.parametrize("layout,message", [
    ({"only": 5}, "at least two"),
    ({}, "0 class sub-folder"),
    ({"cat": 5, "dog": 0}, "Class 'dog' .* has no readable image"),
    ({"cat": 5, "dog": 2}, "Class 'dog' has 2 readable image"),
])
def test_bad_folder_layouts_are_clear_errors(tmp_path, real_png, layout, message):
    _make_classes(tmp_path, layout, real_png)
    with pytest.raises(DataError, match=message):
        load_image_folder(tmp_path, 28, 1, 0.1, seed=0)


def test_a_class_of_only_unreadable_files_is_a_clear_error(tmp_path, real_png):
    _make_classes(tmp_path, {"cat": 5}, real_png)
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="Class 'dog' .* has no readable image"):
        load_image_folder(tmp_path, 28, 1, 0.1, seed=0)


def test_missing_folder_and_missing_data_dir_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="No folder at"):
        load_image_folder(tmp_path / "nope", 28, 1, 0.1, seed=0)
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset(TrainConfig(dataset="folder"))
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset(TrainConfig(dataset="cifar10"))


# --- CIFAR-10 python batches -------------------------------------------------------------------

def _cifar_batch(images: np.ndarray, labels) -> dict:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return {b"batch_label": b"test", b"labels": [int(v) for v in labels], b"data": rows,
            b"filenames": [b"x.png"] * len(images)}


@pytest.fixture
def cifar_dir(tmp_path, fashion_mnist_test):
    """CIFAR-10's on-disk format, filled with real Fashion-MNIST pictures as 32x32 RGB."""
    x, y = fashion_mnist_test
    rgb = np.stack([np.asarray(to_picture(i).convert("RGB").resize((32, 32))) for i in x[:120]])
    for part in range(5):
        chunk = slice(part * 20, part * 20 + 20)
        (tmp_path / f"data_batch_{part + 1}").write_bytes(pickle.dumps(_cifar_batch(rgb[chunk], y[chunk])))
    (tmp_path / "test_batch").write_bytes(pickle.dumps(_cifar_batch(rgb[100:], y[100:120])))
    meta = {b"label_names": [n.encode() for n in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]]}
    (tmp_path / "batches.meta").write_bytes(pickle.dumps(meta))
    return tmp_path, rgb, y


def test_cifar10_batches_load_in_nhwc_order(cifar_dir):
    path, rgb, y = cifar_dir
    x_train, y_train, x_test, y_test, labels = load_cifar10(path)
    assert x_train.shape == (100, 32, 32, 3) and x_test.shape == (20, 32, 32, 3)
    assert np.array_equal(x_train, rgb[:100]) and np.array_equal(y_test, y[100:120])
    assert labels[:3] == ["a", "b", "c"]


class _Exploit:
    def __reduce__(self):
        return (shutil.rmtree, ("/definitely/not/here",))


def test_cifar10_loader_refuses_pickles_that_call_code(cifar_dir):
    path, _, _ = cifar_dir
    (path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Exploit()}))
    with pytest.raises(DataError, match="refusing to load shutil.rmtree"):
        load_cifar10(path)


def test_missing_cifar10_batches_are_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="No CIFAR-10 batches"):
        load_cifar10(tmp_path)
