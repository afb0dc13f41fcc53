"""The CNN: a pure builder from hyper-parameters to an uncompiled Keras model.

Input: raw 0-255 pixels (float32, NHWC). Augmentation layers come first and act only when
training=True; Rescaling is inside the model, so every exported format takes raw pixels too.
"""

from __future__ import annotations

import keras
from keras import layers, regularizers

from train.config import TrainConfig

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
MOBILENET_MIN_SIZE = 32


class ModelConfigError(ValueError):
    """The hyper-parameters do not describe a buildable model."""


def make_augmentation(seed: int) -> list[layers.Layer]:
    """Label-preserving jitter, active only in training (Keras preprocessing layers are no-ops otherwise)."""
    return [
        layers.RandomFlip("horizontal", seed=seed, name="augment_flip"),
        layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 1, name="augment_shift"),
    ]


def make_model(input_shape: tuple[int, int, int], num_classes: int, config: TrainConfig) -> keras.Model:
    if num_classes < 2:
        raise ModelConfigError(f"need at least two classes, got {num_classes}")
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    x = inputs
    if config.augment:
        for layer in make_augmentation(config.seed):
            x = layer(x)
    if config.base == "mobilenetv2":
        x = _mobilenet_features(x, input_shape, config)
    else:
        x = _conv_features(x, config)
    regularizer = regularizers.L2(config.weight_decay) if config.weight_decay > 0 else None
    if config.dense_units > 0:
        x = layers.Dense(config.dense_units, use_bias=False, kernel_initializer="he_normal",
                         kernel_regularizer=regularizer, name="dense")(x)
        x = layers.BatchNormalization(name="dense_bn")(x)
        x = layers.ReLU(name="dense_relu")(x)
    if config.dense_dropout > 0:
        x = layers.Dropout(config.dense_dropout, name="dense_dropout")(x)
    # float32 even under mixed precision: a softmax in bfloat16 rounds small probabilities away.
    outputs = layers.Dense(num_classes, activation="softmax", kernel_initializer="glorot_uniform",
                           dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="pocketcnn")


def _conv_features(x, config: TrainConfig):
    if not config.filters:
        raise ModelConfigError("filters must list at least one conv block, e.g. 32,64,128")
    regularizer = regularizers.L2(config.weight_decay) if config.weight_decay > 0 else None
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    for block, filters in enumerate(config.filters, start=1):
        for conv in range(1, config.convs_per_block + 1):
            # No bias: the batch norm that follows has its own shift.
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                              kernel_regularizer=regularizer, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
        if config.conv_dropout > 0:
            x = layers.Dropout(config.conv_dropout, name=f"block{block}_dropout")(x)
    return layers.Flatten(name="flatten")(x)


def _mobilenet_features(x, input_shape, config: TrainConfig):
    height, width, channels = input_shape
    if channels != 3 or min(height, width) < MOBILENET_MIN_SIZE:
        raise ModelConfigError(
            f"the mobilenetv2 base needs RGB input of at least {MOBILENET_MIN_SIZE}x{MOBILENET_MIN_SIZE}; "
            f"got {height}x{width}x{channels}. Use --color-mode rgb --image-size 96 (for example)."
        )
    base = keras.applications.MobileNetV2(
        input_shape=input_shape, include_top=False, pooling="avg",
        weights=config.base_weights or None,  # a local file or random: no downloads here
    )
    base.trainable = config.fine_tune
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)  # MobileNetV2 expects [-1, 1]
    # A frozen base keeps its batch-norm statistics: run it in inference mode.
    return base(x, training=None if config.fine_tune else False)


def make_optimizer(name: str, learning_rate) -> keras.optimizers.Optimizer:
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    if name == "nadam":
        return keras.optimizers.Nadam(learning_rate)
    raise ModelConfigError(f"unknown optimizer '{name}'; choose adam, rmsprop, sgd or nadam")


WARMUP_SHARE_LIMIT = 0.3


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """A number (the plateau schedule changes it from a callback), a cosine decay over every step, or one cycle:
    a linear warm-up from a tenth of the peak, then a cosine decay to the minimum at the last step."""
    if config.lr_schedule == "onecycle":
        total = config.epochs * steps_per_epoch
        # At most 30 % of the run: a one-epoch run (a quick check, a test) still gets its decay, not only the warm-up.
        warmup = max(1, min(round(config.warmup_epochs * steps_per_epoch), round(WARMUP_SHARE_LIMIT * total)))
        return keras.optimizers.schedules.CosineDecay(
            config.learning_rate / 10, decay_steps=max(1, total - warmup),
            alpha=min(1.0, config.min_learning_rate / config.learning_rate),
            warmup_target=config.learning_rate, warmup_steps=warmup)
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=max(1, config.epochs * steps_per_epoch),
            alpha=min(1.0, config.min_learning_rate / config.learning_rate))
    return config.learning_rate


def compile_model(model: keras.Model, config: TrainConfig, steps_per_epoch: int = 1) -> keras.Model:
    model.compile(
        optimizer=make_optimizer(config.optimizer, learning_rate(config, steps_per_epoch)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
