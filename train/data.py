"""Datasets: Fashion-MNIST (IDX files), a folder of photos per class, CIFAR-10 python batches.

Every loader returns a `Dataset` of uint8 NHWC arrays already in the model's input form, with the
class names taken from the data. Folder images go through contract.decode_image, the same function
the service uses.
"""

from __future__ import annotations

import gzip
import io
import logging
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from contract import ImageError, decode_image
from train.config import resolved_input_recipe

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist   (or: make setup)"
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FOLDER_DEFAULT_SIZE = 96
# A class needs one image for each of training, validation and test.
MIN_IMAGES_PER_CLASS = 3


class DataError(ValueError):
    """The data cannot be used for training; the message says what to do."""


@dataclass
class Dataset:
    name: str
    labels: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    skipped: list[str] = field(default_factory=list)  # unreadable files, folder datasets only

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.labels)} classes, {self.input_shape[0]}x{self.input_shape[1]}x"
            f"{self.input_shape[2]}; train {len(self.x_train)}, validation {len(self.x_val)}, test {len(self.x_test)}"
        )


# --- Fashion-MNIST ----------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(f"{path} is truncated: {len(data) - offset} bytes of data, expected {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Fashion-MNIST file {stem}(.gz) not found in {directory}. Install the data with:\n    {FASHION_MNIST_INSTALL}"
    )


def load_fashion_mnist(
    directory: str | Path = FASHION_MNIST_DIR
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    directory = Path(directory or FASHION_MNIST_DIR)
    x_train = read_idx(_find_idx(directory, "train-images-idx3-ubyte"))[..., np.newaxis]
    y_train = read_idx(_find_idx(directory, "train-labels-idx1-ubyte")).astype(np.int64)
    x_test = read_idx(_find_idx(directory, "t10k-images-idx3-ubyte"))[..., np.newaxis]
    y_test = read_idx(_find_idx(directory, "t10k-labels-idx1-ubyte")).astype(np.int64)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DataError(f"Fashion-MNIST in {directory}: image and label counts differ")
    return x_train, y_train, x_test, y_test


# --- CIFAR-10 ---------------------------------------------------------------------------------

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10 batches are pickles; only let them build numpy arrays, never call anything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to load {module}.{name} from a CIFAR-10 batch: not a plain data pickle")


def _read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            batch = _ArrayOnlyUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        if isinstance(err, DataError):
            raise DataError(f"{path}: {err}") from None
        raise DataError(f"{path} is not a CIFAR-10 python batch ({err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def load_cifar10(directory: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    directory = Path(directory)
    if not (directory / "data_batch_1").is_file():
        raise DataError(
            f"No CIFAR-10 batches in {directory}: expected data_batch_1..5, test_batch and batches.meta "
            "(the 'CIFAR-10 python version' archive, extracted)."
        )

    def arrays(batch: dict, path: Path):
        data = np.asarray(batch.get("data"))
        labels = np.asarray(batch.get("labels"), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DataError(f"{path}: expected 'data' of N x 3072 bytes and N 'labels'")
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.uint8), labels

    train_parts = [arrays(_read_cifar_batch(p), p) for p in sorted(directory.glob("data_batch_*"))]
    x_test, y_test = arrays(_read_cifar_batch(directory / "test_batch"), directory / "test_batch")
    meta_path = directory / "batches.meta"
    if meta_path.is_file():
        names = _read_cifar_batch(meta_path).get("label_names", [])
        labels = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    else:
        labels = [str(i) for i in range(10)]
    x_train = np.concatenate([x for x, _ in train_parts])
    y_train = np.concatenate([y for _, y in train_parts])
    return x_train, y_train, x_test, y_test, labels


# --- folder of photos ---------------------------------------------------------------------------

def load_image_folder(
    directory: str | Path, size: int, channels: int, validation_fraction: float, seed: int, recipe: str = "crop"
) -> Dataset:
    """One sub-folder per class; every readable image in it (recursively) is an example.

    Split per class, deterministically by seed, into train / validation / test
    (validation and test each `validation_fraction` of the class, at least one image each).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"No folder at {directory}. Expected one sub-folder of images per class.")
    class_dirs = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        found = ", ".join(p.name for p in class_dirs) or "none"
        raise DataError(
            f"{directory} has {len(class_dirs)} class sub-folder(s) ({found}); a classifier needs at least two, "
            "e.g. photos/cat/*.jpg and photos/dog/*.jpg."
        )
    files = {
        d.name: sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
        for d in class_dirs
    }
    all_files = [(label, path) for label, paths in files.items() for path in paths]

    def decode(item):
        _, path = item
        try:
            return decode_image(path, size, size, channels, recipe=recipe)
        except ImageError as err:
            return err

    with ThreadPoolExecutor(max_workers=4) as pool:
        decoded = list(
            tqdm(pool.map(decode, all_files), total=len(all_files), desc="Reading images", unit="img",
                 disable=len(all_files) < 200)
        )
    skipped = [str(path) for (_, path), result in zip(all_files, decoded, strict=True)
               if isinstance(result, ImageError)]
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        log.warning("Skipped %d of %d files that are not readable images: %s", len(skipped), len(all_files), shown)

    labels = list(files)
    rng = np.random.default_rng(seed)
    parts = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for class_index, label in enumerate(labels):
        images = [r for (lab, _), r in zip(all_files, decoded, strict=True)
                  if lab == label and not isinstance(r, ImageError)]
        if len(images) == 0:
            raise DataError(f"Class '{label}' ({directory / label}) has no readable image.")
        if len(images) < MIN_IMAGES_PER_CLASS:
            raise DataError(
                f"Class '{label}' has {len(images)} readable image(s); at least {MIN_IMAGES_PER_CLASS} are needed "
                "(one each for training, validation and test)."
            )
        order = rng.permutation(len(images))
        held = max(1, int(round(len(images) * validation_fraction)))
        split = {"test": order[:held], "val": order[held:2 * held], "train": order[2 * held:]}
        if len(split["train"]) == 0:
            split["train"] = split["val"]  # tiny class: validation doubles as training rather than failing
        for name, indices in split.items():
            parts[name][0].extend(images[i] for i in indices)
            parts[name][1].extend([class_index] * len(indices))

    def stack(name):
        x, y = parts[name]
        return np.stack(x).astype(np.uint8), np.asarray(y, dtype=np.int64)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = stack("train"), stack("val"), stack("test")
    return Dataset(directory.name, labels, x_train, y_train, x_val, y_val, x_test, y_test, skipped)


# --- common -------------------------------------------------------------------------------------

def conform(images: np.ndarray, size: int, channels: int, recipe: str = "crop") -> np.ndarray:
    """Bring array images to size x size x channels through the shared image function and the run's recipe."""
    if images.shape[1:] == (size, size, channels):
        return images
    out = np.empty((len(images), size, size, channels), dtype=np.uint8)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, format="PNG")
        out[i] = decode_image(buffer.getvalue(), size, size, channels, recipe=recipe)
    return out


def split_validation(x, y, fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(len(x))
    held = max(1, int(round(len(x) * fraction)))
    return x[order[held:]], y[order[held:]], x[order[:held]], y[order[:held]]


def limit(x, y, count: int, seed: int):
    if count <= 0 or count >= len(x):
        return x, y
    chosen = np.sort(np.random.default_rng(seed).choice(len(x), size=count, replace=False))
    return x[chosen], y[chosen]


def load_dataset(config) -> Dataset:
    """Load the dataset a TrainConfig asks for, in the model's input form."""
    channels = {"grayscale": 1, "rgb": 3}.get(config.color_mode)
    if config.dataset == "folder":
        if not config.data_dir:
            raise DataError("--dataset folder needs --data-dir PATH (one sub-folder of images per class).")
        dataset = load_image_folder(
            config.data_dir, config.image_size or FOLDER_DEFAULT_SIZE, channels or 3,
            config.validation_fraction, config.seed, resolved_input_recipe(config.dataset, config.input_recipe),
        )
    else:
        if config.dataset == "fashion_mnist":
            x_train, y_train, x_test, y_test = load_fashion_mnist(config.data_dir or FASHION_MNIST_DIR)
            labels, native = FASHION_MNIST_LABELS, 28
        elif config.dataset == "cifar10":
            if not config.data_dir:
                raise DataError("--dataset cifar10 needs --data-dir PATH (the extracted cifar-10-batches-py folder).")
            x_train, y_train, x_test, y_test, labels = load_cifar10(config.data_dir)
            native = 32
        else:
            raise DataError(f"Unknown dataset '{config.dataset}'")
        x_train, y_train, x_val, y_val = split_validation(x_train, y_train, config.validation_fraction, config.seed)
        size = config.image_size or native
        channels = channels or x_train.shape[-1]
        x_train, y_train = limit(x_train, y_train, config.train_limit, config.seed)
        x_val, y_val = limit(x_val, y_val, config.train_limit and max(1, config.train_limit // 5), config.seed)
        x_test, y_test = limit(x_test, y_test, config.test_limit, config.seed)
        recipe = resolved_input_recipe(config.dataset, config.input_recipe)
        x_train, x_val, x_test = (conform(x, size, channels, recipe) for x in (x_train, x_val, x_test))
        dataset = Dataset(config.dataset, labels, x_train, y_train, x_val, y_val, x_test, y_test)
    if config.dataset == "folder":
        dataset.x_train, dataset.y_train = limit(dataset.x_train, dataset.y_train, config.train_limit, config.seed)
        dataset.x_test, dataset.y_test = limit(dataset.x_test, dataset.y_test, config.test_limit, config.seed)
    return dataset
