"""Pictures of a run: training curves, confusion matrix, first-layer filters, feature maps of one sample."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from contract import run_folder as rf  # noqa: E402


def write_plots(run_dir: Path, model, dataset, history: list[dict], metrics: dict) -> list[Path]:
    out = run_dir / rf.PLOTS
    out.mkdir(exist_ok=True)
    written = [plot_curves(history, metrics, out / "curves.png"),
               plot_confusion(metrics, out / "confusion_matrix.png")]
    conv = first_conv(model)
    if conv is not None:
        written.append(plot_filters(conv, out / "filters.png"))
        written.append(plot_feature_maps(model, conv, dataset, out / "feature_maps.png"))
    return written


def plot_curves(history: list[dict], metrics: dict, path: Path) -> Path:
    epochs = [row["epoch"] + 1 for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        ax.plot(epochs, [row.get(key) for row in history], "o-", label="train")
        ax.plot(epochs, [row.get("val_" + key) for row in history], "o-", label="validation")
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    best = metrics.get("best_epoch")
    if best and best > 0:
        for ax in axes[:2]:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1)
        axes[1].annotate(f"best: epoch {best}", (best, axes[1].get_ylim()[0]), xytext=(4, 8),
                         textcoords="offset points", color="grey")
    axes[2].plot(epochs, [row.get("learning_rate") for row in history], "o-", color="tab:green")
    axes[2].set(title="Learning rate", xlabel="epoch", yscale="log")
    axes[2].grid(alpha=0.3)
    fig.suptitle(f"Test accuracy of the best checkpoint: {metrics['test_accuracy'] * 100:.2f} %")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(metrics: dict, path: Path) -> Path:
    matrix = np.asarray(metrics["confusion_matrix"], dtype=float)
    labels = metrics["labels"]
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(5, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (share of each true class)")
    if len(labels) <= 20:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if matrix[i, j]:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def first_conv(model):
    """The first Conv2D layer, looking inside nested models (e.g. a MobileNetV2 base)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return layer
        if isinstance(layer, keras.Model):
            inner = first_conv(layer)
            if inner is not None:
                return inner
    return None


def plot_filters(conv, path: Path, limit: int = 64) -> Path:
    kernel = np.asarray(conv.kernel)  # (kh, kw, in, out)
    count = min(limit, kernel.shape[-1])
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.1))
    for index, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if index < count:
            weights = kernel[..., index]
            weights = weights.mean(axis=-1) if weights.shape[-1] != 3 else weights
            low, high = weights.min(), weights.max()
            ax.imshow((weights - low) / (high - low + 1e-12), cmap=None if weights.ndim == 3 else "gray")
    fig.suptitle(f"First-layer filters ({conv.name}, {count} of {kernel.shape[-1]})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_feature_maps(model, conv, dataset, path: Path, limit: int = 32) -> Path:
    import keras

    sample = dataset.x_test[:1].astype("float32")
    try:
        probe = keras.Model(model.input, conv.output)
    except ValueError:  # conv is inside a nested base model (MobileNetV2): the picture shows the input alone
        probe = None
    maps = np.asarray(probe(sample, training=False))[0] if probe is not None else None
    count = min(limit, maps.shape[-1]) if maps is not None else 0
    columns = 8
    rows = int(np.ceil(count / columns)) + 1
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.3))
    axes = np.atleast_2d(axes)
    for ax in axes.ravel():
        ax.axis("off")
    image = dataset.x_test[0]
    axes[0, 0].imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
    axes[0, 0].set_title(f"input: {dataset.labels[int(dataset.y_test[0])]}", fontsize=8)
    for index in range(count):
        ax = axes[1 + index // columns, index % columns]
        ax.imshow(maps[..., index], cmap="viridis")
    fig.suptitle(f"Feature maps after {conv.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
