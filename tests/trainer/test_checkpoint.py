"""Checkpoints: a full round trip of model and optimizer, atomic writes, damage detected."""

from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from trainer import CheckpointWriter, build_model, load_checkpoint, save_checkpoint


def _trained_model(seed: int = 0) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    keras.utils.set_random_seed(seed)
    model = build_model("small_cnn", 32, "none", optimizer="adam", learning_rate=1e-3)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 2, 16).astype(np.float32)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model, x, y


@pytest.fixture(scope="module")
def trained() -> keras.Model:
    """One trained model for the tests that only save it (building one costs seconds)."""
    return _trained_model()[0]


def test_round_trip_restores_model_optimizer_rng_and_state(tmp_path: Path) -> None:
    model, x, y = _trained_model()
    path = tmp_path / "checkpoint.npz"
    state = {"epoch": 3, "history": [{"loss": 0.5, "val_loss": float("nan")}]}
    random.seed(11)
    np.random.seed(12)
    save_checkpoint(path, model, state)
    expected_python, expected_numpy = random.random(), np.random.random()

    keras.utils.set_random_seed(99)  # another init, other RNG states
    fresh = build_model("small_cnn", 32, "none", optimizer="adam", learning_rate=1e-3)
    checkpoint = load_checkpoint(path)
    assert checkpoint is not None
    assert checkpoint.state["epoch"] == 3
    assert np.isnan(checkpoint.state["history"][0]["val_loss"])
    checkpoint.restore(fresh)
    assert (random.random(), np.random.random()) == (expected_python, expected_numpy)
    for a, b in zip(model.variables, fresh.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(fresh.optimizer.iterations.numpy()) == 2
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # One more identical step from both gives identical weights: the optimizer really resumed.
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    fresh.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.weights, fresh.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_weights_only_checkpoint_has_no_optimizer_part(
    tmp_path: Path, trained: keras.Model
) -> None:
    model = trained
    save_checkpoint(tmp_path / "best.npz", model, {}, include_optimizer=False)
    checkpoint = load_checkpoint(tmp_path / "best.npz")
    assert checkpoint is not None and checkpoint.optimizer_variables == ()
    assert len(checkpoint.model_variables) == len(model.variables)


def test_missing_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "nothing.npz") is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_checkpoint_is_detected_and_ignored(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture, trained: keras.Model
) -> None:
    model = trained
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, model, {"epoch": 1})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="trainer._checkpoint"):
        assert load_checkpoint(path) is None
    assert "damaged checkpoint" in caplog.text


def test_tampered_entry_with_valid_zip_fails_the_checksum(
    tmp_path: Path, trained: keras.Model
) -> None:
    model = trained
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, model, {"epoch": 1})
    with np.load(path) as archive:
        entries = {name: archive[name] for name in archive.files}
    entries["model/00000"] = entries["model/00000"] + 1.0
    with open(path, "wb") as file:
        np.savez(file, **entries)
    assert load_checkpoint(path) is None


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary(
    tmp_path: Path, trained: keras.Model
) -> None:
    model = trained
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, model, {"epoch": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_checkpoint(path, model, {"epoch": 2, "unserialisable": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]
    checkpoint = load_checkpoint(path)
    assert checkpoint is not None and checkpoint.state == {"epoch": 1}


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_save_removes_what_killed_writers_on_this_machine_left(
    tmp_path: Path, trained: keras.Model
) -> None:
    """A SIGKILL skips every cleanup: the next save of the same file deletes the temporary
    files of dead writers on this machine, and leaves a live writer's and another machine's."""
    host = socket.gethostname()
    path = tmp_path / "checkpoint.npz"
    dead = tmp_path / f".checkpoint.npz.{host}.{_dead_pid()}.tmp"
    live = tmp_path / f".checkpoint.npz.{host}.{os.getppid()}.tmp"
    elsewhere = tmp_path / f".checkpoint.npz.other-node.{_dead_pid()}.tmp"
    for leftover in (dead, live, elsewhere):
        leftover.write_bytes(b"half a checkpoint")
    save_checkpoint(path, trained, {"epoch": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["checkpoint.npz", live.name, elsewhere.name]
    )


def test_restore_into_another_architecture_is_refused(
    tmp_path: Path, trained: keras.Model
) -> None:
    model = trained
    save_checkpoint(tmp_path / "c.npz", model, {})
    other = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Dense(2)])
    other.compile(optimizer="adam", loss="mse")
    checkpoint = load_checkpoint(tmp_path / "c.npz")
    assert checkpoint is not None
    with pytest.raises(ValueError, match="variable"):
        checkpoint.restore(other)


def test_background_writer_keeps_order_and_reports_failures(
    tmp_path: Path, trained: keras.Model
) -> None:
    with CheckpointWriter() as writer:
        for epoch in range(1, 5):
            writer.save(tmp_path / "checkpoint.npz", trained, {"epoch": epoch})
        writer.save(tmp_path / "best.npz", trained, {"epoch": 4}, include_optimizer=False)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.npz")
    assert checkpoint is not None and checkpoint.state == {"epoch": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "checkpoint.npz"]

    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError), CheckpointWriter() as writer:
        writer.save(tmp_path / "a-file" / "checkpoint.npz", trained, {})  # its folder is a file
