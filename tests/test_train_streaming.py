"""Folder datasets streamed from disk (train/streaming.py): the in-memory loader's split, labels and skipped files,
the same images through the same decode_image and input recipe, sharded by file, and stored arrays that do not grow
with the data set."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from helpers import encode, to_picture

from contract import run_folder as rf
from train import data as data_module
from train.config import TrainConfig
from train.data import folder_is_streamed, load_dataset, load_image_folder, stream_image_folder

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, fashion_mnist_test):
    """Three classes of real Fashion-MNIST pictures as photos of mixed sizes, modes and formats (RGB, grey,
    palette, RGBA; PNG and JPEG), plus a truncated PNG and a text file."""
    x, y = fashion_mnist_test
    root = tmp_path_factory.mktemp("stream-photos")
    rng = np.random.default_rng(3)
    for label, name, count in ((0, "t-shirt", 23), (1, "trouser", 20), (9, "ankle boot", 17)):
        (root / name).mkdir()
        for i, index in enumerate(np.flatnonzero(y == label)[:count]):
            picture = to_picture(x[index]).resize((int(rng.choice([28, 50, 90])),) * 2).convert(
                ["RGB", "L", "P", "RGBA"][i % 4])
            jpeg = i % 2 == 0 and picture.mode in ("RGB", "L")
            (root / name / f"{i:03d}.{'jpg' if jpeg else 'png'}").write_bytes(
                encode(picture, "JPEG" if jpeg else "PNG"))
    good = (root / "trouser" / "001.png").read_bytes()
    (root / "trouser" / "cut.png").write_bytes(good[: len(good) // 2])
    (root / "t-shirt" / "readme.txt").write_text("not a photo")
    return root


CONFIG = TrainConfig(dataset="folder", image_size=24, validation_fraction=0.15, seed=5, input_recipe="pad")


def both(photos, **changes):
    config = replace(CONFIG, data_dir=str(photos), **changes)
    return load_dataset(replace(config, stream="false")), load_dataset(replace(config, stream="true"))


def test_streaming_keeps_the_in_memory_split_labels_and_skipped_files(photos):
    memory, streamed = both(photos)
    assert streamed.streamed and not memory.streamed
    assert streamed.labels == memory.labels == ["ankle boot", "t-shirt", "trouser"]
    assert streamed.skipped == memory.skipped and len(streamed.skipped) == 2
    for split, x, y in (("train", memory.x_train, memory.y_train), ("val", memory.x_val, memory.y_val),
                        ("test", memory.x_test, memory.y_test)):
        images, labels = streamed.images(getattr(streamed, split))
        assert np.array_equal(images, x) and np.array_equal(labels, y), split  # same files, same order, same pixels
    limited_memory, limited = both(photos, train_limit=20, test_limit=5)
    assert np.array_equal(limited.images(limited.train)[0], limited_memory.x_train)
    assert np.array_equal(limited.images(limited.test)[0], limited_memory.x_test)


def batches_of(dataset) -> tuple[np.ndarray, np.ndarray]:
    x, y = zip(*((np.asarray(a), np.asarray(b)) for a, b in dataset), strict=True)
    return np.concatenate(x), np.concatenate(y)


def test_the_pipeline_gives_the_decoded_images_in_order_and_shuffles_training(photos):
    from train.streaming import file_batches

    memory, streamed = both(photos)
    x, y = batches_of(file_batches(streamed, streamed.val, batch_size=4))
    assert x.dtype == np.float32 and np.array_equal(x, memory.x_val.astype(np.float32))
    assert np.array_equal(y, memory.y_val)
    x, y = batches_of(file_batches(streamed, streamed.train, batch_size=8, shuffle_seed=1))
    assert sorted(map(bytes, x.astype(np.uint8))) == sorted(map(bytes, memory.x_train))  # each image once
    assert not np.array_equal(y, memory.y_train)  # in another order
    repeated = file_batches(streamed, streamed.train, batch_size=8, shuffle_seed=1, repeat=True)
    x, _ = batches_of(repeated.take(2 * len(memory.x_train) // 8))  # training never runs out of batches
    assert len(x) == 2 * len(memory.x_train) // 8 * 8


def test_workers_read_disjoint_shares_of_the_files_that_cover_them_all(photos):
    from train.streaming import file_batches

    _, streamed = both(photos)
    shares = [batches_of(file_batches(streamed, streamed.train, batch_size=5, shards=2, shard=i))[0]
              for i in (0, 1)]
    assert abs(len(shares[0]) - len(shares[1])) <= 1
    seen = [set(map(bytes, share.astype(np.uint8))) for share in shares]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(map(bytes, streamed.images(streamed.train)[0]))


def test_auto_streams_big_folders_and_every_multi_worker_run(photos, monkeypatch):
    config = replace(CONFIG, data_dir=str(photos))
    assert not folder_is_streamed(config, 24, 3)
    assert folder_is_streamed(replace(config, strategy="multi-worker"), 24, 3)
    assert folder_is_streamed(replace(config, stream="true"), 24, 3)
    assert not folder_is_streamed(replace(config, stream="false", strategy="multi-worker"), 24, 3)
    monkeypatch.setattr(data_module, "STREAM_ABOVE_BYTES", 60 * 24 * 24 * 3 - 1)  # 62 files of 24x24x3 > this
    assert folder_is_streamed(config, 24, 3)


def test_stored_arrays_are_the_in_memory_ones_and_capped(photos, tmp_path, monkeypatch):
    from train.run import save_arrays

    memory, streamed = both(photos)
    config = replace(CONFIG, train_sample_size=7)
    monkeypatch.setattr(rf, "MAX_TEST_ARRAYS", 4)
    monkeypatch.setattr(rf, "MAX_VALIDATION_ARRAYS", 5)
    for name, dataset in (("memory", memory), ("streamed", streamed)):
        (tmp_path / name).mkdir()
        save_arrays(tmp_path / name, dataset, config)
    for part, count in ((rf.TEST_ARRAYS, 4), (rf.VALIDATION_ARRAYS, 5), (rf.TRAIN_SAMPLE_ARRAYS, 7)):
        kept, streamed_kept = np.load(tmp_path / "memory" / part), np.load(tmp_path / "streamed" / part)
        assert len(kept["x"]) == count, part
        assert np.array_equal(kept["x"], streamed_kept["x"]) and np.array_equal(kept["y"], streamed_kept["y"]), part


@pytest.mark.slow
def test_a_streamed_folder_trains_into_a_complete_run_folder(photos, tmp_path):
    from train.run import train

    config = replace(CONFIG, data_dir=str(photos), stream="true", epochs=2, batch_size=8, filters=(8,),
                     dense_units=16, train_sample_size=20, precision="float32", runs_dir=str(tmp_path),
                     run_name="streamed")
    run = train(config)
    metrics = json.loads((run / rf.METRICS).read_text())
    memory = load_dataset(replace(config, stream="false"))
    assert metrics["test_images"] == len(memory.x_test) and metrics["train_images"] == len(memory.x_train)
    assert len(metrics["skipped_files"]) == 2 and metrics["epochs_run"] == 2
    assert json.loads((run / rf.CONFIG).read_text())["input_recipe"] == "pad"
    test = np.load(run / rf.TEST_ARRAYS)
    assert np.array_equal(test["x"], memory.x_test)
    for plot in ("curves", "confusion_matrix", "filters", "feature_maps"):
        assert (run / rf.PLOTS / f"{plot}.png").is_file()
    import keras

    model = keras.models.load_model(run / rf.BEST_MODEL, safe_mode=True)
    predicted = np.asarray(model(test["x"].astype("float32"), training=False)).argmax(axis=1)
    assert (predicted == test["y"]).mean() == pytest.approx(metrics["test_accuracy"], abs=1e-9)


def test_the_in_memory_loader_is_unchanged(photos):
    """load_image_folder, called directly as before (the split helper is shared now)."""
    dataset = load_image_folder(photos, 24, 1, 0.15, seed=5, recipe="crop")
    assert len(dataset.x_train) + len(dataset.x_val) + len(dataset.x_test) == 60
    assert sorted(np.bincount(dataset.y_test).tolist()) == [3, 3, 3]
    again = stream_image_folder(photos, 24, 1, 0.15, seed=5, recipe="crop")
    assert np.array_equal(again.images(again.test)[0], dataset.x_test)
