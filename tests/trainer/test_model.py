"""The cell's network and config: uint8 in, Inception scaling inside, local weights, bad values."""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import trainer._model
from trainer import CellConfig, DataConfig, InputError, build_base, build_model


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_small_cnn_takes_uint8_and_scales_inside_like_inception() -> None:
    model = build_model("small_cnn", 32, "none", optimizer="adam", learning_rate=1e-3)
    assert model.inputs[0].dtype == "uint8"
    images = _images(4, 32)
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (4, 1)
    assert np.all((probabilities > 0) & (probabilities < 1))
    # The same network applied by hand to x / 127.5 - 1 gives the same output.
    base, head = model.get_layer("small_cnn"), model.get_layer("pneumonia")
    scaled = images.astype(np.float32) / 127.5 - 1.0
    by_hand = keras.ops.convert_to_numpy(head(base(scaled)))
    np.testing.assert_allclose(probabilities, by_hand, rtol=1e-5, atol=1e-6)
    assert model.loss == "binary_crossentropy"
    assert type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)


@pytest.mark.parametrize(("name", "cls"), [("sgd", "SGD"), ("rmsprop", "RMSprop")])
def test_optimizer_choice(name: str, cls: str) -> None:
    model = build_model("small_cnn", 32, "none", optimizer=name, learning_rate=0.01)
    assert type(model.optimizer).__name__ == cls
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)


@pytest.mark.slow
def test_inception_v3_loads_a_local_no_top_weights_file_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer._model, "_IMAGENET_HOST", "download.invalid")
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
    assert head.units == 1 and head.activation.__name__ == "sigmoid"
    assert model.predict(_images(2, 75), verbose=0).shape == (2, 1)


def test_a_weights_file_of_another_base_is_refused_in_one_line(tmp_path: Path) -> None:
    other = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 5)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(InputError) as error:
        build_model("small_cnn", 32, str(path), optimizer="adam", learning_rate=1e-3)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "--weights none" in message


def test_imagenet_weights_offline_fail_at_once_naming_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.keras cache either
    monkeypatch.setattr(trainer._model, "_IMAGENET_HOST", "download.invalid")
    if trainer._model.imagenet_weights_cached():
        pytest.skip("/tmp/.keras holds the ImageNet weights, so they are not offline here")
    started = time.perf_counter()
    with pytest.raises(InputError) as error:
        build_model("inception_v3", 75, "imagenet", optimizer="adam", learning_rate=1e-3)
    assert time.perf_counter() - started < 10  # bounded by the probe timeout, not a download
    message = str(error.value)
    assert "\n" not in message and "--weights none" in message and "--weights PATH" in message


def test_imagenet_weights_in_the_keras_cache_count_as_available(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / trainer._model._IMAGENET_FILE).write_bytes(b"")
    monkeypatch.setattr(trainer._model, "_IMAGENET_HOST", "download.invalid")
    trainer._model.check_imagenet_reachable()  # does not raise


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
