"""The cell's network and config: uint8 in, Inception scaling inside, local weights, bad values."""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from trainer import CellConfig, DataConfig, InputError, build_base, build_model, validation_metrics


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_small_cnn_takes_uint8_and_scales_inside_like_inception() -> None:
    model = build_model("small_cnn", 32, "none", optimizer="adam", learning_rate=1e-3)
    assert model.inputs[0].dtype == "uint8"
    images = _images(4, 32)
    logits = model.predict(images, verbose=0)
    assert logits.shape == (4, 1) and logits.dtype == np.float32
    # The same network applied by hand to x / 127.5 - 1 gives the same output.
    base, head = model.get_layer("small_cnn"), model.get_layer("pneumonia")
    scaled = images.astype(np.float32) / 127.5 - 1.0
    by_hand = keras.ops.convert_to_numpy(head(base(scaled)))
    np.testing.assert_allclose(logits, by_hand, rtol=1e-5, atol=1e-6)
    assert type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)


def test_the_head_outputs_a_logit_trained_with_keras_cross_entropy_from_logits() -> None:
    model = build_model("small_cnn", 32, "none", optimizer="adam", learning_rate=1e-3)
    assert model.get_layer("pneumonia").activation.__name__ == "linear"
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)
    assert model.loss.get_config()["from_logits"] is True
    # A saturated head: logit 40 for every image. The loss Keras trains with is the true one
    # (40 for a NORMAL image), not one clipped at -log(1e-7) = 16.1, and so is ours.
    head = model.get_layer("pneumonia")
    head.kernel.assign(np.zeros(head.kernel.shape, dtype="float32"))
    head.bias.assign(np.full(head.bias.shape, 40.0, dtype="float32"))
    images, labels = _images(6, 32), np.array([0, 0, 0, 1, 1, 1], dtype=np.float32)
    keras_loss, keras_accuracy = model.evaluate(images, labels, verbose=0)
    logits = model.predict(images, verbose=0)
    ours = validation_metrics(labels, logits)
    assert keras_loss == pytest.approx(20.0, rel=1e-5)
    assert ours["val_loss"] == pytest.approx(keras_loss, rel=1e-6)
    # Keras's training accuracy thresholds the logit at 0, i.e. the probability at 0.5.
    assert keras_accuracy == ours["val_accuracy"] == 0.5


def test_validation_loss_is_the_loss_keras_evaluates_on_the_same_images() -> None:
    model = build_model("small_cnn", 32, "none", optimizer="adam", learning_rate=1e-3)
    head = model.get_layer("pneumonia")
    head.kernel.assign(np.random.default_rng(1).normal(0, 3, head.kernel.shape).astype("float32"))
    images = _images(20, 32, seed=2)
    labels = np.random.default_rng(3).integers(0, 2, 20).astype(np.float32)
    keras_loss, keras_accuracy = model.evaluate(images, labels, batch_size=7, verbose=0)
    ours = validation_metrics(labels, model.predict(images, verbose=0))
    assert ours["val_loss"] == pytest.approx(keras_loss, rel=1e-5)
    assert ours["val_accuracy"] == pytest.approx(keras_accuracy)


@pytest.mark.parametrize(("model", "size", "trainable"), [("small_cnn", 32, 65)])
def test_a_frozen_base_leaves_the_head_alone_to_train(
    model: str, size: int, trainable: int
) -> None:
    frozen = build_model(
        model, size, "none", optimizer="adam", learning_rate=0.1, freeze_base=True
    )
    assert sum(int(np.prod(w.shape)) for w in frozen.trainable_weights) == trainable
    before = [w.numpy().copy() for w in frozen.get_layer(model).weights]
    head_before = frozen.get_layer("pneumonia").kernel.numpy().copy()
    frozen.fit(_images(8, size), np.arange(8) % 2, epochs=1, batch_size=4, verbose=0)
    for saved, weight in zip(before, frozen.get_layer(model).weights, strict=True):
        np.testing.assert_array_equal(saved, weight.numpy())  # batch-norm statistics too
    assert not np.array_equal(head_before, frozen.get_layer("pneumonia").kernel.numpy())
    tuned = build_model(model, size, "none", optimizer="adam", learning_rate=0.1)
    assert sum(int(np.prod(w.shape)) for w in tuned.trainable_weights) > trainable


@pytest.mark.slow
def test_a_frozen_inception_v3_trains_its_2049_head_weights_in_inference_mode() -> None:
    frozen = build_model(
        "inception_v3", 75, "none", optimizer="adam", learning_rate=0.1, freeze_base=True
    )
    assert sum(int(np.prod(w.shape)) for w in frozen.trainable_weights) == 2049
    base = frozen.get_layer("inception_v3")
    statistics = [w.numpy().copy() for w in base.weights if "moving" in w.path]
    assert statistics
    frozen.fit(_images(4, 75), np.array([0, 1, 0, 1]), epochs=1, batch_size=4, verbose=0)
    moved = [w.numpy() for w in base.weights if "moving" in w.path]
    for saved, now in zip(statistics, moved, strict=True):
        np.testing.assert_array_equal(saved, now)


@pytest.mark.parametrize(("name", "cls"), [("sgd", "SGD"), ("rmsprop", "RMSprop")])
def test_optimizer_choice(name: str, cls: str) -> None:
    model = build_model("small_cnn", 32, "none", optimizer=name, learning_rate=0.01)
    assert type(model.optimizer).__name__ == cls
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)


@pytest.mark.slow
def test_inception_v3_loads_a_local_no_top_weights_file_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LRSTUDY_WEIGHTS_ORIGIN", "http://download.invalid/")  # never asked
    base = build_base("inception_v3", 75)
    for variable in base.weights[:5]:  # make the file differ from any fresh initialisation
        variable.assign(np.full(variable.shape, 0.25, dtype=variable.dtype))
    path = tmp_path / "inception_base.weights.h5"
    base.save_weights(path)

    model = build_model("inception_v3", 75, str(path), optimizer="adam", learning_rate=1e-3)
    assert model.inputs[0].dtype == "uint8"
    loaded = model.get_layer("inception_v3")
    assert loaded.output.shape == (None, 2048)
    assert len(loaded.weights) == len(base.weights)
    for saved, got in zip(base.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(saved.numpy(), got.numpy())
    head = model.get_layer("pneumonia")
    assert head.units == 1 and head.activation.__name__ == "linear"
    assert model.predict(_images(2, 75), verbose=0).shape == (2, 1)


def test_a_weights_file_of_another_base_is_refused_in_one_line(tmp_path: Path) -> None:
    other = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 5)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(InputError) as error:
        build_model("small_cnn", 32, str(path), optimizer="adam", learning_rate=1e-3)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and 'or "none"' in message


def test_imagenet_weights_offline_fail_at_once_naming_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_origin: str
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("LRSTUDY_WEIGHTS_ORIGIN", closed_origin)  # the download is refused
    started = time.perf_counter()
    with pytest.raises(InputError) as error:
        build_model("inception_v3", 75, "imagenet", optimizer="adam", learning_rate=1e-3)
    assert time.perf_counter() - started < 10  # refused at once, not after a download timeout
    message = str(error.value)
    assert "\n" not in message and 'use weights "none"' in message
    assert "give its path as weights" in message


def _config(tmp_path: Path, **changes: object) -> CellConfig:
    values: dict[str, object] = {
        "data": DataConfig(str(tmp_path)),
        "learning_rate": 0.001,
        "seed": 0,
        "out_dir": str(tmp_path / "out"),
        "weights": "none",
    }
    return CellConfig(**{**values, **changes})


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"learning_rate": 0.0}, ["learning_rate", "> 0", "0.0"]),
        ({"learning_rate": -0.1}, ["learning_rate", "> 0", "-0.1"]),
        ({"learning_rate": math.nan}, ["learning_rate", "nan"]),
        ({"learning_rate": math.inf}, ["learning_rate", "inf"]),
        ({"seed": -1}, ["seed", ">= 0", "-1"]),
        ({"seed": 1.5}, ["seed", "1.5"]),
        ({"epochs": 0}, ["epochs", ">= 1", "0"]),
        ({"batch_size": 0}, ["batch_size", ">= 1", "0"]),
        ({"eval_batch_size": 0}, ["eval_batch_size", "0"]),
        ({"image_size": 74}, ["image_size", "inception_v3", ">= 75", "74"]),
        ({"image_size": 31, "model": "small_cnn"}, ["image_size", "small_cnn", ">= 32", "31"]),
        ({"model": "resnet"}, ["model", '"inception_v3", "small_cnn"', "'resnet'"]),
        ({"optimizer": "adagrad"}, ["optimizer", '"adam", "sgd", "rmsprop"', "'adagrad'"]),
        ({"test_weights": "first"}, ["test_weights", '"last", "best"', "'first'"]),
        ({"weights": "no/such.h5"}, ["weights", "'no/such.h5'", "imagenet"]),
        ({"weights": "imagenet", "model": "small_cnn"}, ["weights", "small_cnn", '"none"']),
        ({"deterministic": "yes"}, ["deterministic", "'yes'"]),
        ({"freeze_base": "yes"}, ["freeze_base", "true or false", "'yes'"]),
        ({"backend": "torch"}, ["backend", '"tensorflow", "jax"', "'torch'"]),
        ({"out_dir": ""}, ["out_dir", "a folder path"]),
    ],
)
def test_bad_config_values_are_one_line_errors(
    tmp_path: Path, changes: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(InputError) as error:
        _config(tmp_path, **changes)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_a_bad_patient_key_is_a_one_line_error() -> None:
    with pytest.raises(InputError, match='patient_key must be one of "person-type", "person"'):
        DataConfig(patient_key="id")


def test_config_round_trips_through_its_dict(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        data=DataConfig(str(tmp_path), split="ratios", ratios=(0.6, 0.2, 0.2), limit_per_class=5),
        model="small_cnn",
        image_size=32,
    )
    assert CellConfig.from_dict(config.to_dict()) == config
    key = config.resume_key()
    assert "out_dir" not in key and "epochs" not in key
    assert "root" not in key["data"] and "cache_dir" not in key["data"]  # locations only
    assert key["learning_rate"] == 0.001 and key["data"]["ratios"] == [0.6, 0.2, 0.2]
    # The protocol's open choices are part of what a checkpoint must share.
    assert key["freeze_base"] is False and key["backend"] == "tensorflow"
    assert key["data"]["patient_key"] == "person-type"
