"""One cell end to end: small real runs, files, reproducibility, resume, divergence, hooks."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from tests.trainer.conftest import BACKEND
from trainer import (
    CellConfig,
    CellResult,
    ConfigError,
    DataConfig,
    InputError,
    binary_metrics,
    load_checkpoint,
    load_dataset,
    save_checkpoint,
    set_up_cell,
    train_cell,
)
from trainer._metrics import sigmoid

METRICS = (
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "roc_auc",
    "brier",
    "collapsed",
    "tn",
    "fp",
    "fn",
    "tp",
)


def _config(data: DataConfig, out: Path, **changes: Any) -> CellConfig:
    values: dict[str, Any] = {
        "data": data,
        "learning_rate": 0.003,
        "seed": 1,
        "out_dir": str(out),
        "epochs": 2,
        "batch_size": 8,
        "eval_batch_size": 16,
        "image_size": 32,
        "model": "small_cnn",
        "weights": "none",
        "backend": BACKEND,
    }
    return CellConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def straight(data: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> CellResult:
    """A plain two-epoch run that the other runs are compared with."""
    return train_cell(_config(data, tmp_path_factory.mktemp("straight")))


def _outcome(result: CellResult) -> dict[str, Any]:
    """Everything a run computes, without wall times and paths."""
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in result.history]
    return {
        "history": history,
        "final": result.final,
        "best": result.best,
        "test": result.test,
        "diverged": result.diverged,
        "predictions": Path(result.predictions_path).read_text(),
    }


def test_result_fields_and_files(straight: CellResult, data: DataConfig) -> None:
    out = Path(straight.config.out_dir)
    assert straight.epochs_run == 2 and not straight.diverged and straight.diverged_epoch is None
    assert [row["epoch"] for row in straight.history] == [1, 2]
    for row in straight.history:
        assert set(row) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
        assert all(math.isfinite(row[k]) for k in row) and row["seconds"] > 0
    last = straight.history[-1]
    assert straight.final == {k: last[k] for k in ("epoch", "val_loss", "val_accuracy")}
    best = max(straight.history, key=lambda r: (r["val_accuracy"], -r["val_loss"], -r["epoch"]))
    assert straight.best == {k: best[k] for k in ("epoch", "val_loss", "val_accuracy")}
    assert straight.test["weights"] == "last" and straight.test["epoch"] == 2
    assert straight.trainable_parameters == 16 * 28 + 32 * 145 + 64 * 289 + 65  # every layer
    assert set(METRICS) <= set(straight.test)
    assert (
        straight.test["tn"] + straight.test["fp"] + straight.test["fn"] + straight.test["tp"] == 14
    )

    assert json.loads((out / "result.json").read_text()) == straight.to_dict()
    with open(out / "history.csv") as file:
        rows = list(csv.DictReader(file))
    assert [float(r["val_loss"]) for r in rows] == [r["val_loss"] for r in straight.history]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert straight.checkpoint_path == str(out / "checkpoint.npz")
    checkpoint = load_checkpoint(straight.checkpoint_path)
    assert checkpoint is not None and len(checkpoint.state["history"]) == 2

    environment = straight.environment
    assert environment["backend"] == keras.backend.backend()
    assert environment["seed"] == 1 and environment["deterministic"] is True
    assert environment["packages"]["keras"] == keras.__version__
    assert environment["dataset_fingerprint"] == load_dataset(data, 32).fingerprint
    assert environment["device"]


def test_test_metrics_recomputed_from_predictions_csv_are_the_reported_ones(
    straight: CellResult, data: DataConfig
) -> None:
    with open(straight.predictions_path) as file:
        rows = list(csv.DictReader(file))
    test_part = load_dataset(data, 32).test
    assert [r["path"] for r in rows] == list(test_part.paths)
    labels = np.array([int(r["label"]) for r in rows])
    assert labels.tolist() == test_part.labels.tolist()
    logits = np.array([float(r["logit"]) for r in rows])
    probabilities = np.array([float(r["probability"]) for r in rows])
    assert probabilities.tolist() == sigmoid(logits).tolist()
    recomputed = binary_metrics(labels, probabilities, scores=logits)
    assert {k: straight.test[k] for k in METRICS} == {k: recomputed.to_dict()[k] for k in METRICS}


def test_validation_predictions_come_from_the_tested_weights(
    straight: CellResult, data: DataConfig
) -> None:
    # The export picks its secondary (Youden) threshold on these, never on the test part.
    with open(Path(straight.predictions_path).with_name("val_predictions.csv")) as file:
        rows = list(csv.DictReader(file))
    val_part = load_dataset(data, 32).val
    assert [r["path"] for r in rows] == list(val_part.paths)
    probabilities = np.array([float(r["probability"]) for r in rows])
    # The tested weights are the last epoch's: their accuracy is the last epoch's val_accuracy.
    accuracy = float(np.mean((probabilities > 0.5) == val_part.labels.astype(bool)))
    assert accuracy == pytest.approx(straight.final["val_accuracy"])


def test_the_same_config_twice_gives_the_same_result(
    straight: CellResult, data: DataConfig, tmp_path: Path
) -> None:
    again = train_cell(_config(data, tmp_path))
    assert _outcome(again) == _outcome(straight)


def test_evaluation_batch_size_does_not_change_the_results(
    straight: CellResult, data: DataConfig, tmp_path: Path
) -> None:
    other = train_cell(_config(data, tmp_path, eval_batch_size=5))
    assert other.history[-1]["loss"] == straight.history[-1]["loss"]  # same training
    for ours, theirs in zip(other.history, straight.history, strict=True):
        assert ours["val_accuracy"] == theirs["val_accuracy"]
        # XLA (JAX) compiles each batch shape on its own, which may move the last float32 bit.
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-6)
    assert {k: other.test[k] for k in ("accuracy", "tn", "fp", "fn", "tp")} == {
        k: straight.test[k] for k in ("accuracy", "tn", "fp", "fn", "tp")
    }


class _Crash(Exception):
    """Stands for the process dying right after an epoch's checkpoint."""


def test_a_run_crashed_after_epoch_one_and_resumed_equals_a_straight_run(
    straight: CellResult, data: DataConfig, tmp_path: Path
) -> None:
    def crash(epoch: int, logs: dict[str, Any]) -> bool:
        raise _Crash

    with pytest.raises(_Crash):
        train_cell(_config(data, tmp_path), crash)
    assert not (tmp_path / "result.json").exists()
    checkpoint = load_checkpoint(tmp_path / "checkpoint.npz")
    assert checkpoint is not None and len(checkpoint.state["history"]) == 1
    resumed = train_cell(_config(data, tmp_path), resume=True)
    assert _outcome(resumed) == _outcome(straight)


def test_a_finished_cell_extended_by_resume_equals_a_longer_straight_run(
    straight: CellResult, data: DataConfig, tmp_path: Path
) -> None:
    train_cell(_config(data, tmp_path, epochs=1))
    told: list[tuple[int, float]] = []
    extended = train_cell(
        _config(data, tmp_path, epochs=2),
        on_saved=lambda epoch, logs: told.append((epoch, logs["val_loss"])),
        resume=True,
    )
    assert _outcome(extended) == _outcome(straight)
    # The epoch the checkpoint held is told again first: the study's trial gets every epoch.
    assert told == [(row["epoch"], row["val_loss"]) for row in straight.history]


def test_a_cell_resumes_on_a_copy_of_its_dataset_elsewhere_with_new_mtimes(
    straight: CellResult, data: DataConfig, tmp_path: Path
) -> None:
    """As on another machine of a study sharing its artifacts, or after the data was moved."""
    out = tmp_path / "cell"
    first = train_cell(_config(data, out, epochs=1))
    copy = shutil.copytree(data.root, tmp_path / "moved")
    later = time.time() + 3600
    for path in Path(copy).rglob("*"):
        os.utime(path, (later, later))  # as a re-extracted archive has
    moved = dataclasses.replace(data, root=str(copy))
    assert load_dataset(moved, 32).cache_path != load_dataset(data, 32).cache_path
    resumed = train_cell(_config(moved, out), resume=True)
    assert resumed.history[0] == first.history[0]  # epoch 1 kept, its wall time included
    assert _outcome(resumed) == _outcome(straight)


def test_a_damaged_checkpoint_is_ignored_and_the_cell_starts_afresh(
    straight: CellResult, data: DataConfig, tmp_path: Path
) -> None:
    train_cell(_config(data, tmp_path, epochs=1))
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(path.read_bytes()[:1000])
    again = train_cell(_config(data, tmp_path), resume=True)
    assert _outcome(again) == _outcome(straight)


def test_an_existing_checkpoint_needs_resume_and_one_of_another_cell_is_set_aside(
    straight: CellResult, data: DataConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "cell"
    shutil.copytree(straight.config.out_dir, out)
    with pytest.raises(InputError, match="--resume"):
        train_cell(_config(data, out))
    shutil.copy(out / "checkpoint.npz", out / "best.npz")  # as a test_weights best run has
    other = train_cell(_config(data, out, learning_rate=0.1), resume=True)
    assert other.epochs_run == 2 and other.config.learning_rate == 0.1
    (aside,) = tmp_path.glob("cell.set-aside-*/checkpoint.npz")
    kept = load_checkpoint(aside)
    assert kept is not None and kept.state["resume_key"]["learning_rate"] == 0.003
    assert "is of another cell (differs in learning_rate)" in caplog.text
    # Its best weights go with it: never tested as another cell's.
    assert (aside.parent / "best.npz").exists() and not (out / "best.npz").exists()


def test_a_checkpoint_of_this_cell_that_does_not_fit_the_model_is_set_aside(
    straight: CellResult, data: DataConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Same cell, other variables (another Keras release may order or shape them otherwise):
    set aside whole before anything is assigned, and the cell trains afresh, as if new."""
    out = tmp_path / "cell"
    shutil.copytree(straight.config.out_dir, out)
    kept = load_checkpoint(out / "checkpoint.npz")
    assert kept is not None
    other = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Dense(1)])
    other.compile(optimizer="adam", loss="mse")
    save_checkpoint(out / "checkpoint.npz", other, kept.state)
    again = train_cell(_config(data, out), resume=True)
    assert _outcome(again) == _outcome(straight)
    (aside,) = tmp_path.glob("cell.set-aside-*/checkpoint.npz")
    assert load_checkpoint(aside) is not None  # kept, whole
    assert "is not of this model (holds 2 model variables but the model has " in caplog.text


def test_the_hook_sees_every_epoch_and_can_stop_the_cell(data: DataConfig, tmp_path: Path) -> None:
    calls: list[tuple[int, dict[str, Any]]] = []

    def hook(epoch: int, logs: dict[str, Any]) -> bool:
        calls.append((epoch, logs))
        return epoch == 2

    result = train_cell(_config(data, tmp_path, epochs=4), hook)
    assert [epoch for epoch, _ in calls] == [1, 2]
    assert calls[0][1] == {**result.history[0], "diverged": False}
    assert result.epochs_run == 2 and result.final["epoch"] == 2
    assert result.test["epoch"] == 2


def test_on_saved_reports_each_epoch_only_once_its_checkpoint_is_on_disk(
    data: DataConfig, tmp_path: Path
) -> None:
    # The study records an epoch here: a kill right after must not lose more than that epoch.
    seen: list[tuple[int, int, str]] = []

    def on_saved(epoch: int, logs: dict[str, Any]) -> None:
        checkpoint = load_checkpoint(tmp_path / "checkpoint.npz")
        assert checkpoint is not None
        saved = checkpoint.state["history"][-1]["epoch"]
        seen.append((epoch, saved, threading.current_thread().name))

    result = train_cell(_config(data, tmp_path, epochs=3), on_saved=on_saved)
    assert [epoch for epoch, _, _ in seen] == [1, 2, 3]  # every epoch, in order, before return
    assert all(saved >= epoch for epoch, saved, _ in seen)
    assert all(name.startswith("epoch-report") for _, _, name in seen)  # off the training path
    assert result.epochs_run == 3


def test_an_error_in_on_saved_is_raised_from_the_cell(data: DataConfig, tmp_path: Path) -> None:
    def on_saved(epoch: int, logs: dict[str, Any]) -> None:
        raise RuntimeError(f"the study could not record epoch {epoch}")

    with pytest.raises(RuntimeError, match="could not record epoch 1"):
        train_cell(_config(data, tmp_path, epochs=2), on_saved=on_saved)


def test_a_nan_loss_is_a_result_not_a_crash(data: DataConfig, tmp_path: Path) -> None:
    result = train_cell(_config(data, tmp_path, learning_rate=1e10, epochs=3))
    assert result.diverged and result.diverged_epoch == 1 and result.epochs_run == 1
    assert result.history[0]["loss"] is None or not math.isfinite(result.history[0]["loss"])
    # NaN predicts NORMAL, as Keras's accuracy counts it: 6 of the 14 validation images.
    assert result.history[0]["val_accuracy"] == pytest.approx(6 / 14)
    assert result.test["roc_auc"] == 0.5 and result.test["collapsed"] is True
    assert result.test["accuracy"] == pytest.approx(6 / 14) and result.test["f1"] == 0.0
    saved = json.loads((tmp_path / "result.json").read_text())  # strict JSON: no NaN
    assert saved["diverged"] is True and saved["history"][0]["loss"] is None
    assert saved["test"]["roc_auc"] == 0.5
    # Resuming a diverged cell trains no further.
    again = train_cell(_config(data, tmp_path, learning_rate=1e10, epochs=3), resume=True)
    assert again.epochs_run == 1 and again.diverged_epoch == 1


def test_best_weights_are_tested_when_asked(data: DataConfig, tmp_path: Path) -> None:
    result = train_cell(_config(data, tmp_path, epochs=3, test_weights="best"))
    assert result.test["weights"] == "best"
    assert result.test["epoch"] == result.best["epoch"]
    best = load_checkpoint(tmp_path / "best.npz")
    assert best is not None and best.optimizer_variables == ()
    assert best.state == {"epoch": result.best["epoch"]}


def test_resume_completes_best_weights_a_crash_left_behind(
    data: DataConfig, tmp_path: Path
) -> None:
    """best.npz follows its epoch's checkpoint; a crash between the two leaves it behind, and
    the best epoch is then the checkpoint's last, whose weights the resume has just restored."""
    from trainer import build_model
    from trainer._train import _complete_best_weights, _lost_best_weights

    model = build_model("small_cnn", 32, "none", optimizer="adam", learning_rate=1e-3)
    state: dict[str, Any] = {"history": [{"epoch": 1}, {"epoch": 2}], "best": {"epoch": 2}}
    _complete_best_weights(tmp_path, model, state)  # the crash came before best.npz
    best = load_checkpoint(tmp_path / "best.npz")
    assert best is not None and best.state == {"epoch": 2}
    for saved, variable in zip(best.model_variables, model.variables, strict=True):
        np.testing.assert_array_equal(saved, keras.ops.convert_to_numpy(variable))
    written = (tmp_path / "best.npz").stat().st_mtime_ns
    _complete_best_weights(tmp_path, model, state)  # in step: left alone
    assert (tmp_path / "best.npz").stat().st_mtime_ns == written
    config = _config(data, tmp_path, test_weights="best")
    assert _lost_best_weights(tmp_path, config, state) is None
    state["best"] = {"epoch": 1}  # an earlier best epoch whose weights are gone: set aside
    assert _lost_best_weights(tmp_path, config, state) == (
        "lacks the weights of its best epoch 1 (best.npz holds epoch 2)"
    )
    (tmp_path / "best.npz").unlink()
    assert _lost_best_weights(tmp_path, config, state) == (
        "lacks the weights of its best epoch 1 (best.npz is missing)"
    )


@pytest.fixture(scope="module")
def frozen(data: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> CellResult:
    return train_cell(_config(data, tmp_path_factory.mktemp("frozen"), freeze_base=True))


def test_a_frozen_base_trains_the_head_alone_and_resumes_exactly(
    frozen: CellResult, straight: CellResult, data: DataConfig, tmp_path: Path
) -> None:
    assert frozen.trainable_parameters == 65 and frozen.config.freeze_base is True
    assert (
        json.loads(Path(frozen.config.out_dir, "result.json").read_text())["trainable_parameters"]
        == 65
    )
    assert _outcome(frozen)["history"] != _outcome(straight)["history"]

    def crash(epoch: int, logs: dict[str, Any]) -> bool:
        raise _Crash

    with pytest.raises(_Crash):
        train_cell(_config(data, tmp_path, freeze_base=True), crash)
    resumed = train_cell(_config(data, tmp_path, freeze_base=True), resume=True)
    assert _outcome(resumed) == _outcome(frozen)


def test_a_checkpoint_from_before_the_new_keys_resumes_as_the_old_protocol(
    data: DataConfig, tmp_path: Path
) -> None:
    """Old checkpoints lack freeze_base, backend and data.patient_key in their resume key;
    they meant fine-tuning, TensorFlow and the merged "person" key."""
    old = dataclasses.replace(data, patient_key="person")
    config = _config(old, tmp_path, backend="tensorflow")
    if config.backend != BACKEND:
        pytest.skip("old checkpoints are TensorFlow's")
    first = train_cell(dataclasses.replace(config, epochs=1))
    checkpoint = load_checkpoint(tmp_path / "checkpoint.npz")
    assert checkpoint is not None
    state = dict(checkpoint.state)
    key = {k: v for k, v in state["resume_key"].items() if k not in ("freeze_base", "backend")}
    key["data"] = {k: v for k, v in key["data"].items() if k != "patient_key"}
    model = set_up_cell(config).model
    checkpoint.restore(model)
    save_checkpoint(tmp_path / "checkpoint.npz", model, {**state, "resume_key": key})
    resumed = train_cell(config, resume=True)
    assert resumed.history[0] == first.history[0] and resumed.epochs_run == 2


def test_a_cell_refuses_a_backend_other_than_the_loaded_one(
    data: DataConfig, tmp_path: Path
) -> None:
    other = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
    with pytest.raises(ConfigError, match=f"KERAS_BACKEND={other}") as error:
        train_cell(_config(data, tmp_path, backend=other))
    assert error.value.key == "backend" and "\n" not in str(error.value)


@pytest.mark.slow
def test_inception_v3_cell_at_75_px(make_dataset, cache_dir: str, tmp_path: Path) -> None:
    root = make_dataset(parts={"train": (6, 6), "val": (3, 3), "test": (3, 3)}).root
    config = CellConfig(
        data=DataConfig(str(root), split="kaggle", cache_dir=cache_dir),
        learning_rate=1e-3,
        seed=0,
        out_dir=str(tmp_path / "out"),
        epochs=1,
        image_size=75,
        weights="none",
        backend=BACKEND,
    )
    result = train_cell(config)
    assert result.config.model == "inception_v3" and result.epochs_run == 1
    assert math.isfinite(result.history[0]["loss"]) and not result.diverged
    assert result.test["tn"] + result.test["fp"] + result.test["fn"] + result.test["tp"] == 6
    assert (tmp_path / "out" / "predictions.csv").read_text().count("\n") == 7
