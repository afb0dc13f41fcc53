"""Datasets: Fashion-MNIST (IDX files), a folder of photos per class, CIFAR-10 python batches.

Every loader returns a `Dataset` of uint8 NHWC arrays already in the model's input form, with the
class names taken from the data. Folder images go through contract.decode_image, the same function
the service uses; a folder too big for memory becomes a `StreamedDataset` (file lists, read batch by
batch by train/streaming.py) with the same split, labels and skipped files.
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
    streamed = False  # every image is in memory (StreamedDataset: read from disk batch by batch)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def train_count(self) -> int:
        return len(self.x_train)

    @property
    def val_count(self) -> int:
        return len(self.x_val)

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

# A folder dataset is streamed from disk (auto) when its decoded images would take more than this: below it,
# decoding every image once into memory is faster than decoding each one again every epoch.
STREAM_ABOVE_BYTES = 1 << 30


def list_image_folder(directory: str | Path) -> tuple[Path, dict[str, list[Path]]]:
    """The class sub-folders of `directory` (sorted: their order is the label order) and each one's files."""
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
    return directory, files


def _decode_all(all_files: list[tuple[str, Path]], decode, what: str) -> list:
    """decode(item) for every file, four at a time, in order; a progress bar for big folders."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(tqdm(pool.map(decode, all_files), total=len(all_files), desc=what, unit="img",
                         disable=len(all_files) < 200))


def _report_skipped(all_files: list[tuple[str, Path]], unreadable: list[bool]) -> list[str]:
    skipped = [str(path) for (_, path), bad in zip(all_files, unreadable, strict=True) if bad]
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        log.warning("Skipped %d of %d files that are not readable images: %s", len(skipped), len(all_files), shown)
    return skipped


def split_classes(directory: Path, labels: list[str], readable: list[int], validation_fraction: float,
                  seed: int) -> list[dict[str, np.ndarray]]:
    """Per class (in label order): which of its readable images go to train, validation and test. Validation
    and test each take `validation_fraction` of the class (at least one image each), chosen by the seed.
    Both folder loaders (in memory and streamed) split with this, so they split alike."""
    rng = np.random.default_rng(seed)
    splits = []
    for label, count in zip(labels, readable, strict=True):
        if count == 0:
            raise DataError(f"Class '{label}' ({directory / label}) has no readable image.")
        if count < MIN_IMAGES_PER_CLASS:
            raise DataError(
                f"Class '{label}' has {count} readable image(s); at least {MIN_IMAGES_PER_CLASS} are needed "
                "(one each for training, validation and test)."
            )
        order = rng.permutation(count)
        held = max(1, int(round(count * validation_fraction)))
        split = {"test": order[:held], "val": order[held:2 * held], "train": order[2 * held:]}
        if len(split["train"]) == 0:
            split["train"] = split["val"]  # tiny class: validation doubles as training rather than failing
        splits.append(split)
    return splits


def load_image_folder(
    directory: str | Path, size: int, channels: int, validation_fraction: float, seed: int, recipe: str = "crop"
) -> Dataset:
    """One sub-folder per class; every readable image in it (recursively) is an example, decoded into memory.

    Split per class, deterministically by seed, into train / validation / test
    (validation and test each `validation_fraction` of the class, at least one image each).
    """
    directory, files = list_image_folder(directory)
    all_files = [(label, path) for label, paths in files.items() for path in paths]

    def decode(item):
        _, path = item
        try:
            return decode_image(path, size, size, channels, recipe=recipe)
        except ImageError as err:
            return err

    decoded = _decode_all(all_files, decode, "Reading images")
    skipped = _report_skipped(all_files, [isinstance(result, ImageError) for result in decoded])

    labels = list(files)
    by_class = [[r for (lab, _), r in zip(all_files, decoded, strict=True)
                 if lab == label and not isinstance(r, ImageError)] for label in labels]
    splits = split_classes(directory, labels, [len(images) for images in by_class], validation_fraction, seed)
    parts = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for class_index, (images, split) in enumerate(zip(by_class, splits, strict=True)):
        for name, indices in split.items():
            parts[name][0].extend(images[i] for i in indices)
            parts[name][1].extend([class_index] * len(indices))

    def stack(name):
        x, y = parts[name]
        return np.stack(x).astype(np.uint8, copy=False), np.asarray(y, dtype=np.int64)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = stack("train"), stack("val"), stack("test")
    return Dataset(directory.name, labels, x_train, y_train, x_val, y_val, x_test, y_test, skipped)


@dataclass
class FileSplit:
    """The files of one split and their labels, in a fixed order."""

    paths: list[str]
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> "FileSplit":
        return FileSplit([self.paths[i] for i in indices], self.labels[indices])


@dataclass
class StreamedDataset:
    """A folder dataset read from disk batch by batch (train/streaming.py makes the tf.data pipelines): only the
    file lists are held, so memory does not grow with the number of photos. The split, the labels and the skipped
    files are the in-memory loader's own; the images are the same decode_image(path, recipe) results."""

    name: str
    labels: list[str]
    size: int
    channels: int
    recipe: str
    train: FileSplit
    val: FileSplit
    test: FileSplit
    skipped: list[str] = field(default_factory=list)
    streamed = True

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)

    @property
    def train_count(self) -> int:
        return len(self.train)

    @property
    def val_count(self) -> int:
        return len(self.val)

    @property
    def y_test(self) -> np.ndarray:
        return self.test.labels

    def decode(self, path: str) -> np.ndarray:
        return decode_image(path, self.size, self.size, self.channels, recipe=self.recipe)

    def images(self, split: FileSplit, indices=None) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of `split` (or of its images at `indices`), decoded into memory: for samples, not whole sets."""
        chosen = split if indices is None else split.subset(np.asarray(indices, dtype=np.int64))
        x = np.empty((len(chosen), *self.input_shape), dtype=np.uint8)
        with ThreadPoolExecutor(max_workers=4) as pool:
            for i, image in enumerate(pool.map(self.decode, chosen.paths)):
                x[i] = image
        return x, chosen.labels.copy()

    def batches(self, split: FileSplit, batch_size: int = 512):
        """(x, y) of `split` in order, `batch_size` images at a time."""
        for start in range(0, len(split), batch_size):
            yield self.images(split, np.arange(start, min(start + batch_size, len(split))))

    def summary(self) -> str:
        h, w, c = self.input_shape
        return (f"{self.name}: {len(self.labels)} classes, {h}x{w}x{c}; train {len(self.train)}, validation "
                f"{len(self.val)}, test {len(self.test)} (read from disk batch by batch)")


def stream_image_folder(
    directory: str | Path, size: int, channels: int, validation_fraction: float, seed: int, recipe: str = "crop"
) -> StreamedDataset:
    """load_image_folder's split, labels and skipped files, without keeping any image: each file is decoded once
    (by the same decode_image, through the same recipe) to learn whether it is readable, then dropped."""
    directory, files = list_image_folder(directory)
    all_files = [(label, path) for label, paths in files.items() for path in paths]

    def unreadable(item) -> bool:
        _, path = item
        try:
            decode_image(path, size, size, channels, recipe=recipe)
        except ImageError:
            return True
        return False

    bad = _decode_all(all_files, unreadable, "Checking images")
    skipped = _report_skipped(all_files, bad)
    labels = list(files)
    by_class = [[str(path) for (lab, path), b in zip(all_files, bad, strict=True) if lab == label and not b]
                for label in labels]
    splits = split_classes(directory, labels, [len(paths) for paths in by_class], validation_fraction, seed)
    parts = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for class_index, (paths, split) in enumerate(zip(by_class, splits, strict=True)):
        for name, indices in split.items():
            parts[name][0].extend(paths[i] for i in indices)
            parts[name][1].extend([class_index] * len(indices))
    train, val, test = (FileSplit(parts[name][0], np.asarray(parts[name][1], dtype=np.int64))
                        for name in ("train", "val", "test"))
    return StreamedDataset(directory.name, labels, size, channels, recipe, train, val, test, skipped)


def folder_is_streamed(config, size: int, channels: int) -> bool:
    """--stream: true, false, or auto (stream under multi-worker, where each worker reads only its share of the
    files, or when the decoded images would take more than STREAM_ABOVE_BYTES)."""
    if config.stream != "auto":
        return config.stream == "true"
    if config.strategy == "multi-worker":
        return True
    _, files = list_image_folder(config.data_dir)
    return sum(len(paths) for paths in files.values()) * size * size * channels > STREAM_ABOVE_BYTES


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


def limit_indices(total: int, count: int, seed: int) -> np.ndarray:
    """Which of `total` items a limit of `count` keeps (all for 0): a seeded sample, in the original order."""
    if count <= 0 or count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def limit(x, y, count: int, seed: int):
    if count <= 0 or count >= len(x):
        return x, y
    chosen = limit_indices(len(x), count, seed)
    return x[chosen], y[chosen]


def load_dataset(config) -> Dataset:
    """Load the dataset a TrainConfig asks for, in the model's input form."""
    channels = {"grayscale": 1, "rgb": 3}.get(config.color_mode)
    if config.dataset == "folder":
        if not config.data_dir:
            raise DataError("--dataset folder needs --data-dir PATH (one sub-folder of images per class).")
        size, channels = config.image_size or FOLDER_DEFAULT_SIZE, channels or 3
        loader = stream_image_folder if folder_is_streamed(config, size, channels) else load_image_folder
        dataset = loader(config.data_dir, size, channels, config.validation_fraction, config.seed,
                         resolved_input_recipe(config.dataset, config.input_recipe))
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
    if config.dataset == "folder" and dataset.streamed:
        dataset.train = dataset.train.subset(limit_indices(len(dataset.train), config.train_limit, config.seed))
        dataset.test = dataset.test.subset(limit_indices(len(dataset.test), config.test_limit, config.seed))
    elif config.dataset == "folder":
        dataset.x_train, dataset.y_train = limit(dataset.x_train, dataset.y_train, config.train_limit, config.seed)
        dataset.x_test, dataset.y_test = limit(dataset.x_test, dataset.y_test, config.test_limit, config.seed)
    return dataset
