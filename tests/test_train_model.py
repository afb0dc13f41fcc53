"""The CNN builder: dropout active only in training, augmentation only in training, raw-pixel input,
the optional MobileNetV2 base (no-weights path, a local weights file, frozen or fine-tuned)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from train.config import TrainConfig  # noqa: E402
from train.model import ModelConfigError, compile_model, make_model, make_optimizer  # noqa: E402


@pytest.fixture(scope="module")
def model():
    """The default model, with the augmentation layers (off by default) switched on: both kinds of randomness."""
    return make_model((28, 28, 1), 10, TrainConfig(augment=True))


@pytest.fixture(scope="module")
def batch(fashion_mnist_test):
    return fashion_mnist_test[0][:16].astype("float32")


def test_model_contains_dropout_batchnorm_and_rescaling(model):
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Dropout", "BatchNormalization", "Rescaling", "Conv2D", "MaxPooling2D", "RandomFlip"} <= kinds
    assert model.output_shape == (None, 10)
    rescale = model.get_layer("rescale")
    assert rescale.scale == pytest.approx(1 / 255)


def test_dropout_is_stochastic_in_training_and_off_at_inference(model, batch):
    train_a = np.asarray(model(batch, training=True))
    train_b = np.asarray(model(batch, training=True))
    assert not np.allclose(train_a, train_b), "training=True should sample new dropout masks"
    infer_a = np.asarray(model(batch, training=False))
    infer_b = np.asarray(model(batch, training=False))
    assert np.array_equal(infer_a, infer_b), "training=False must be deterministic"


def test_dropout_alone_makes_training_mode_stochastic(batch):
    """With augmentation off, the randomness in training mode can only come from dropout."""
    no_aug = make_model((28, 28, 1), 10, TrainConfig(augment=False))
    assert not np.allclose(no_aug(batch, training=True), no_aug(batch, training=True))
    no_dropout = make_model((28, 28, 1), 10, TrainConfig(augment=False, conv_dropout=0, dense_dropout=0))
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in no_dropout.layers)
    # batch norm in training mode uses batch statistics but is deterministic: equal calls, equal output
    assert np.allclose(no_dropout(batch, training=True), no_dropout(batch, training=True))


def test_outputs_are_probabilities_of_raw_pixels(model, batch):
    out = np.asarray(model(batch, training=False))
    assert out.shape == (16, 10)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_softmax_stays_float32_under_mixed_precision(batch):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = make_model((28, 28, 1), 10, TrainConfig())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model(batch, training=False).dtype == "float32"


def test_weight_decay_adds_regularization_losses(batch):
    decayed = make_model((28, 28, 1), 10, TrainConfig(weight_decay=1e-4))
    plain = make_model((28, 28, 1), 10, TrainConfig())
    decayed(batch, training=True)
    assert len(decayed.losses) > 0 and len(plain.losses) == 0


@pytest.mark.parametrize("name,kind", [("adam", "Adam"), ("rmsprop", "RMSprop"), ("sgd", "SGD"), ("nadam", "Nadam")])
def test_optimizers(name, kind):
    optimizer = make_optimizer(name, 0.01)
    assert type(optimizer).__name__ == kind
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    if name == "sgd":
        assert optimizer.momentum == pytest.approx(0.9) and optimizer.nesterov


def test_unknown_optimizer_and_bad_model_configs_are_clear_errors():
    with pytest.raises(ModelConfigError, match="unknown optimizer 'adagrad'"):
        make_optimizer("adagrad", 0.1)
    with pytest.raises(ModelConfigError, match="at least two classes"):
        make_model((28, 28, 1), 1, TrainConfig())
    with pytest.raises(ModelConfigError, match="mobilenetv2 base needs RGB"):
        make_model((28, 28, 1), 10, TrainConfig(base="mobilenetv2"))


# --- transfer learning: MobileNetV2 without downloads -----------------------------------------------

MOBILENET = TrainConfig(base="mobilenetv2", augment=False, dense_units=0)


def _base(model):
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def test_mobilenet_base_without_weights_is_frozen_by_default():
    model = make_model((32, 32, 3), 4, MOBILENET)
    base = _base(model)
    assert base.name.startswith("mobilenetv2")
    assert not base.trainable
    assert len(model.trainable_weights) == 2  # only the classifier's kernel and bias


def test_mobilenet_fine_tune_trains_the_base_and_a_step_runs():
    model = compile_model(make_model((32, 32, 3), 4, replace(MOBILENET, fine_tune=True)), MOBILENET)
    assert _base(model).trainable and len(model.trainable_weights) > 100
    # One eager step: tracing MobileNetV2's training graph for a single step took 30 to 60 s, eager 6.
    model.compile(optimizer=model.optimizer, loss=model.loss, run_eagerly=True)
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 4
    before = [w.copy() for w in model.get_weights()[:3]]
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()[:3], strict=True))


def test_mobilenet_weights_are_read_from_a_local_file(tmp_path):
    source = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, pooling="avg", weights=None)
    path = tmp_path / "mobilenet_v2_no_top.weights.h5"
    source.save_weights(path)
    model = make_model((32, 32, 3), 4, replace(MOBILENET, base_weights=str(path)))
    loaded = _base(model).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(loaded, source.get_weights(), strict=True))
