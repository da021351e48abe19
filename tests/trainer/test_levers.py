"""The speed levers of a cell: XLA compilation on and off, mixed precision, their checks."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import keras
import numpy as np
import pytest

from tests.trainer.conftest import BACKEND
from trainer import CellConfig, CellResult, DataConfig, InputError, build_model, train_cell
from trainer._train import RESULT_FILE


def _config(data: DataConfig, out: Path, **changes: Any) -> CellConfig:
    values: dict[str, Any] = {
        "data": data,
        "learning_rate": 0.003,
        "seed": 1,
        "out_dir": str(out),
        "epochs": 2,
        "eval_batch_size": 16,
        "image_size": 32,
        "model": "small_cnn",
        "weights": "none",
        "backend": BACKEND,
        # TensorFlow's op determinism rules out XLA; CPU kernels are deterministic anyway.
        "deterministic": False,
    }
    return CellConfig(**{**values, **changes})


def _probabilities(result: CellResult | SimpleNamespace) -> np.ndarray:
    with open(result.predictions_path) as file:
        return np.array([float(row["probability"]) for row in csv.DictReader(file)])


@pytest.fixture(scope="module")
def compiled(data: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The compiled cell's result, trained in a fresh process under TensorFlow.

    An earlier test of the session may have switched on TensorFlow's op determinism, which rules
    out XLA and cannot be switched off in a process.
    """
    config = _config(data, tmp_path_factory.mktemp("jit"), jit_compile=True)
    if keras.backend.backend() == "tensorflow":
        code = (
            "import json, sys; from trainer import CellConfig, train_cell; "
            "train_cell(CellConfig.from_dict(json.loads(sys.argv[1])))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(config.to_dict())],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        record = json.loads((Path(config.out_dir) / RESULT_FILE).read_text())
    else:
        record = train_cell(config).to_dict()
    return SimpleNamespace(**record)


def test_compiled_and_uncompiled_cells_agree_within_float_tolerance(
    compiled: SimpleNamespace, data: DataConfig, tmp_path: Path
) -> None:
    plain = train_cell(_config(data, tmp_path, jit_compile=False))
    assert compiled.environment["jit_compile"] is True
    assert plain.environment["jit_compile"] is False
    for ours, theirs in zip(compiled.history, plain.history, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
        assert ours["val_accuracy"] == theirs["val_accuracy"]
    np.testing.assert_allclose(_probabilities(compiled), _probabilities(plain), atol=1e-5)


def test_several_steps_per_execution_train_the_same_cell(data: DataConfig, tmp_path: Path) -> None:
    # 28 training images at batch 8: executions of 3 steps leave a tail of one step per epoch.
    one = train_cell(_config(data, tmp_path / "one", jit_compile=False))
    three = train_cell(_config(data, tmp_path / "three", jit_compile=False, steps_per_execution=3))
    assert [row["loss"] for row in three.history] == [row["loss"] for row in one.history]
    assert [row["val_loss"] for row in three.history] == [row["val_loss"] for row in one.history]
    np.testing.assert_array_equal(_probabilities(three), _probabilities(one))
    # It changes how fast a cell runs, not what it computes: a checkpoint resumes across it.
    assert one.config.resume_key() == three.config.resume_key()


def test_auto_compiles_under_jax_and_not_on_a_tensorflow_cpu(
    data: DataConfig, tmp_path: Path
) -> None:
    result = train_cell(_config(data, tmp_path, epochs=1))
    assert result.environment["jit_compile"] is (keras.backend.backend() == "jax")


def test_tensorflow_determinism_turns_compilation_off_and_says_so(
    data: DataConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(data, tmp_path, epochs=1, jit_compile=True, deterministic=True)
    with caplog.at_level("WARNING", logger="trainer._train"):
        result = train_cell(config)
    if keras.backend.backend() == "tensorflow":
        assert result.environment["jit_compile"] is False
        assert any("set deterministic false to compile" in m for m in caplog.messages)
    else:
        assert result.environment["jit_compile"] is True
        assert not caplog.messages


def test_mixed_precision_computes_in_float16_with_a_float32_head() -> None:
    model = build_model(
        "small_cnn", 32, "none", optimizer="adam", learning_rate=1e-3, mixed_precision=True
    )
    assert keras.config.dtype_policy().name == "float32"  # the global policy is put back
    base, head = model.get_layer("small_cnn"), model.get_layer("pneumonia")
    assert base.dtype_policy.name == "mixed_float16"
    assert all(layer.compute_dtype == "float16" for layer in base.layers)
    assert all(weight.dtype == "float32" for weight in model.weights)
    assert head.compute_dtype == "float32"
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    probabilities = keras.ops.convert_to_numpy(model(images))
    assert probabilities.dtype == np.float32 and np.all(np.isfinite(probabilities))
    plain = build_model("small_cnn", 32, "none", optimizer="adam", learning_rate=1e-3)
    assert plain.get_layer("small_cnn").dtype_policy.name == "float32"
    assert type(plain.optimizer).__name__ == "Adam"


@pytest.fixture(scope="module")
def mixed(data: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> CellResult:
    return train_cell(_config(data, tmp_path_factory.mktemp("mixed"), mixed_precision=True))


def test_mixed_precision_trains_close_to_float32_but_not_identically(
    mixed: CellResult, compiled: SimpleNamespace
) -> None:
    assert mixed.environment["dtype_policy"] == "mixed_float16"
    assert compiled.environment["dtype_policy"] == "float32"
    assert all(np.isfinite(row["loss"]) for row in mixed.history) and not mixed.diverged
    # Half precision rounds differently: the results move, which is why the paper preset
    # keeps it off. After one epoch they are still near the float32 run's.
    assert mixed.history[0]["loss"] == pytest.approx(compiled.history[0]["loss"], rel=0.05)
    assert not np.array_equal(_probabilities(mixed), _probabilities(compiled))


class _Crash(Exception):
    """Stands for the process dying right after an epoch's checkpoint."""


def test_a_mixed_precision_cell_resumes_exactly_and_only_as_mixed_precision(
    mixed: CellResult, data: DataConfig, tmp_path: Path
) -> None:
    def crash(epoch: int, logs: dict[str, Any]) -> bool:
        raise _Crash

    cell, other = tmp_path / "cell", tmp_path / "other"
    with pytest.raises(_Crash):
        train_cell(_config(data, cell, mixed_precision=True), crash)
    shutil.copytree(cell, other)
    # A float32 run never resumes a mixed-precision checkpoint: it sets it aside and starts over.
    plain = train_cell(_config(data, other), resume=True)
    (aside,) = tmp_path.glob("other.set-aside-*")
    assert (aside / "checkpoint.npz").is_file()
    assert [row["epoch"] for row in plain.history] == [1, 2]
    assert plain.history[0]["loss"] != mixed.history[0]["loss"]
    resumed = train_cell(_config(data, cell, mixed_precision=True), resume=True)
    # The loss scale is saved with the optimizer, so the resumed run is the straight one.
    assert [row["loss"] for row in resumed.history] == [row["loss"] for row in mixed.history]
    assert np.array_equal(_probabilities(resumed), _probabilities(mixed))


def test_lever_keys_are_in_the_resume_key_and_survive_a_round_trip(tmp_path: Path) -> None:
    plain = _config(DataConfig(str(tmp_path)), tmp_path).resume_key()
    assert plain["mixed_precision"] is False and plain["jit_compile"] == "auto"
    assert _config(DataConfig(str(tmp_path)), tmp_path, mixed_precision=True).resume_key()[
        "mixed_precision"
    ]
    config = _config(DataConfig(str(tmp_path)), tmp_path, jit_compile=True, mixed_precision=True)
    assert CellConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"mixed_precision": "yes"}, ["mixed_precision", "true or false", "'yes'"]),
        ({"mixed_precision": 1}, ["mixed_precision", "1"]),
        ({"jit_compile": "xla"}, ["jit_compile", '"auto", true or false', "'xla'"]),
        ({"jit_compile": 0}, ["jit_compile", "0"]),
    ],
)
def test_bad_lever_values_are_one_line_errors(
    tmp_path: Path, changes: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(InputError) as error:
        _config(DataConfig(str(tmp_path)), tmp_path, **changes)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message
