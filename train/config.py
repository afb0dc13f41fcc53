"""Every hyper-parameter of a training run, with its default. The defaults are the benchmark recipe.

The recipe was chosen on this project's 2-core AMD EPYC (AVX2, no AVX-512, no bfloat16), where the old one
(two convs per block, flip and shift augmentation, dropout 0.25/0.5, 18 epochs on a plateau schedule) took
73 minutes: one conv per block (a quarter of the multiply-adds), a one-cycle learning rate (linear warm-up, then
a cosine decay), 10 epochs, lighter dropout and no augmentation: with schedules this short, flip and shift
cost accuracy (91.9 % in 15 epochs with them, 93.2 % in 10 without). TensorFlow's oneDNN kernels, which it
enables by itself only on CPUs with AVX512-VNNI, BF16 or AMX, cut the CPU time of a step by a third on AVX2:
train/cli.py switches them on. BENCHMARKS.md has the figures.

The CLI is generated from this dataclass (see cli.py), so each field's `help` is what
`python -m train --help` prints, and config.json in the run folder is `asdict(TrainConfig)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.options import option as _opt
from contract.recipes import recipe_for

DATASETS = ("fashion_mnist", "folder", "cifar10")
OPTIMIZERS = ("adam", "rmsprop", "sgd", "nadam")
LR_SCHEDULES = ("onecycle", "plateau", "cosine")
TRAINING_RECIPES = ("full", "quick")
QUICK_EPOCHS = 5  # the quick recipe: the full one, shorter (its one-cycle schedule is complete in 5 epochs)
STRATEGIES = ("none", "mirrored", "multi-worker")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
BASES = ("none", "mobilenetv2")
COLOR_MODES = ("auto", "grayscale", "rgb")
INPUT_RECIPES = ("auto", "crop", "pad", "product_photo")
STREAM_CHOICES = ("auto", "true", "false")


def resolved_input_recipe(dataset: str, input_recipe: str) -> str:
    """The recipe a run records (contract.recipes.recipe_for: auto is the dataset's own)."""
    return recipe_for(dataset, input_recipe)


@dataclass
class TrainConfig:
    # --- data -------------------------------------------------------------------------------
    dataset: str = _opt("fashion_mnist", "fashion_mnist (Debian's IDX files), folder (one sub-folder of photos "
                                         "per class) or cifar10 (python batches)", choices=DATASETS)
    data_dir: str = _opt("", "where the data is; default for fashion_mnist: /usr/share/datasets/fashion-mnist")
    image_size: int = _opt(0, "square input size in pixels; 0 = the dataset's own "
                              "(28 Fashion-MNIST, 32 CIFAR-10, 96 folder)")
    color_mode: str = _opt("auto", "grayscale or rgb; auto = the dataset's own (folders: rgb)", choices=COLOR_MODES)
    input_recipe: str = _opt("auto", "how a photo becomes the model's input, recorded in the manifest and applied by "
                                     "every stage: crop (the centre), pad (the whole photo, padded), product_photo "
                                     "(Fashion-MNIST's own: trim, fit, centre, negate, grey); auto = product_photo "
                                     "for fashion_mnist, crop otherwise", choices=INPUT_RECIPES)
    validation_fraction: float = _opt(0.1, "share of the training images held out for validation "
                                           "(folder: also for test)")
    stream: str = _opt("auto", "folder datasets: read the photos from disk batch by batch every epoch (true) "
                               "rather than decode them all into memory once (false); auto streams when the "
                               "decoded images would take more than 1 GiB, and always with --strategy "
                               "multi-worker (each worker then reads only its share of the files)",
                       choices=STREAM_CHOICES)
    train_limit: int = _opt(0, "use only this many training images (0 = all); for quick runs and tests")
    test_limit: int = _opt(0, "use only this many test images (0 = all)")
    seed: int = _opt(1337, "seed for the data split, shuffling, initialisation and augmentation")
    recipe: str = _opt("full", "full: the benchmark recipe below; quick: the same for 5 epochs (about 92 %, a few "
                               "minutes on 2 cores): the first model `make run` trains when there is none "
                               "(its --epochs is 5)", choices=TRAINING_RECIPES)
    # --- model ------------------------------------------------------------------------------
    filters: tuple[int, ...] = _opt((32, 64, 128), "filters of each conv block (comma-separated); "
                                                   "each block halves the resolution")
    convs_per_block: int = _opt(1, "3x3 conv + batch-norm + ReLU layers per block")
    dense_units: int = _opt(256, "units of the dense layer before the classifier (0 = none)")
    conv_dropout: float = _opt(0.1, "dropout after each conv block")
    dense_dropout: float = _opt(0.3, "dropout before the classifier")
    weight_decay: float = _opt(0.0, "L2 weight decay on conv and dense kernels (0 = off)")
    augment: bool = _opt(False, "random horizontal flip and shift during training (never at inference); they "
                                "pay off in long runs, not in the default 10 epochs")
    base: str = _opt("none", "transfer-learning base instead of the conv blocks: mobilenetv2 "
                             "(needs rgb, image-size >= 32)", choices=BASES)
    base_weights: str = _opt("", "weights file for the base (e.g. mobilenet_v2 *_no_top.h5); "
                                 "empty = random initialisation")
    fine_tune: bool = _opt(False, "train the base's weights too (default: frozen)")
    # --- optimisation -------------------------------------------------------------------------
    optimizer: str = _opt("adam", "adam, rmsprop, sgd (momentum 0.9, Nesterov) or nadam", choices=OPTIMIZERS)
    learning_rate: float = _opt(3e-3, "peak learning rate (onecycle), or the initial one")
    batch_size: int = _opt(128, "images per step")
    epochs: int = _opt(10, "maximum number of epochs (onecycle: the schedule's length)")
    monitor: str = _opt("val_accuracy", "validation metric that picks the best checkpoint (val_accuracy or val_loss)")
    early_stopping_patience: int = _opt(6, "stop after this many epochs without improvement (best weights restored)")
    # Measured with the old recipe (two convs per block, 18 epochs): the plateau schedule reached 93.3 %, a cosine
    # decay over 14 epochs 92.82 %. With one conv per block, one-cycle reaches 93.2 % in 10 epochs (2026-11-30).
    lr_schedule: str = _opt("onecycle", "onecycle: rise linearly from a tenth of --learning-rate to it over "
                                        "--warmup-epochs, then decay (cosine) to --min-learning-rate at the last "
                                        "epoch; plateau: reduce the rate when validation stalls (below); cosine: "
                                        "decay from --learning-rate over --epochs", choices=LR_SCHEDULES)
    warmup_epochs: float = _opt(1.0, "epochs of linear warm-up (onecycle; at most 30 % of the run)")
    reduce_lr_monitor: str = _opt("val_accuracy", "validation metric whose plateau reduces the learning rate "
                                                  "(val_accuracy or val_loss)")
    reduce_lr_patience: int = _opt(2, "reduce the learning rate after this many epochs without improvement")
    reduce_lr_factor: float = _opt(0.5, "factor applied by learning-rate reduction")
    min_learning_rate: float = _opt(3e-5, "learning rate never goes below this")
    max_minutes: float = _opt(0.0, "stop after the epoch that would overrun this many minutes of training "
                                   "(0 = no limit)")
    # --- infrastructure ----------------------------------------------------------------------
    # bfloat16 matmuls/convs are ~20 % faster on CPUs with AVX512-BF16 or AMX, and emulated (slow)
    # elsewhere: auto picks it only where the CPU has it. Weights stay float32 either way, and best.keras
    # is saved as a float32 model.
    precision: str = _opt("auto", "mixed_bfloat16 where the CPU supports bfloat16 natively (auto), "
                                  "or float32", choices=PRECISIONS)
    strategy: str = _opt("none", "tf.distribute strategy: mirrored (all local devices) "
                                 "or multi-worker (reads TF_CONFIG)", choices=STRATEGIES)
    tensorboard: bool = _opt(False, "write TensorBoard logs to <run>/tensorboard")
    runs_dir: str = _opt("runs", "where run folders are created")
    run_name: str = _opt("", "name of the run folder (default: <date>-<time>-<dataset>)")
    train_sample_size: int = _opt(10000, "training images stored in the run for export's calibration and fine-tuning")
