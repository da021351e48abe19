"""The learning-rate range test: real short runs on the cell's model and data, and the rates read
from a curve."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import write_dataset
from tests.trainer.conftest import BACKEND
from trainer import (
    CellConfig,
    DataConfig,
    InputError,
    LrFindResult,
    LrFindRow,
    find_learning_rate,
    set_up_cell,
    write_lr_find_csv,
)
from trainer._lr_find import SMOOTHING


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    """80 training images, 2 per class with the other class's label.

    On clean images the small CNN reaches a loss of exactly 0, its gradients vanish, and then no
    rate makes it diverge; a few wrong labels keep the loss above 0, as real labels do.
    """
    root = tmp_path_factory.mktemp("lr_find")
    write_dataset(root / "data", parts={"train": (40, 40), "val": (2, 2), "test": (2, 2)})
    train = root / "data" / "train"
    flips = [
        (path, other)
        for label, other in (("NORMAL", "PNEUMONIA"), ("PNEUMONIA", "NORMAL"))
        for path in sorted((train / label).iterdir())[:2]
    ]
    for path, other in flips:
        shutil.move(path, train / other / path.name)
    return DataConfig(str(root / "data"), split="kaggle", cache_dir=str(root / "cache"))


def _config(data: DataConfig, **changes: Any) -> CellConfig:
    values: dict[str, Any] = {
        "data": data,
        "learning_rate": 1e-7,  # ignored by the range test: it sets every batch's rate
        "seed": 0,
        "out_dir": "unused",
        "batch_size": 8,
        "image_size": 32,
        "model": "small_cnn",
        "weights": "none",
        "backend": BACKEND,
    }
    return CellConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def curve(noisy: DataConfig) -> LrFindResult:
    return find_learning_rate(_config(noisy), min_lr=1e-4, max_lr=10.0, steps=100)


def test_the_loss_falls_then_rises_as_the_rate_grows(curve: LrFindResult) -> None:
    rates = [row.learning_rate for row in curve.rows]
    assert [row.step for row in curve.rows] == list(range(1, len(curve.rows) + 1))
    assert rates == pytest.approx(np.geomspace(1e-4, 10.0, 100)[: len(rates)].tolist())
    assert rates[0] == 1e-4
    smoothed = [row.smoothed_loss for row in curve.rows]
    lowest = int(np.argmin(smoothed))
    assert smoothed[lowest] < 0.8 * smoothed[0]  # it learns
    assert max(smoothed[lowest:]) > 1.5 * smoothed[lowest]  # then the rate is too high
    assert curve.steepest_lr is not None and curve.steepest_lr < curve.min_loss_lr
    if curve.stopped_early:
        assert curve.stopped_early in ("diverged", "non-finite")
        assert curve.divergence_lr == rates[-1] > curve.min_loss_lr
    else:
        assert len(curve.rows) == 100 and curve.divergence_lr is None


def test_the_smoothed_loss_is_the_bias_corrected_moving_average(curve: LrFindResult) -> None:
    average = 0.0
    for row in curve.curve:
        average = SMOOTHING * average + (1 - SMOOTHING) * row.loss
        assert row.smoothed_loss == pytest.approx(average / (1 - SMOOTHING**row.step), rel=1e-12)


def test_the_suggested_grid_lies_in_the_range_below_the_loss_minimum(curve: LrFindResult) -> None:
    grid = curve.suggested_grid()
    assert len(grid) == 4 and list(grid) == sorted(grid, reverse=True) and len(set(grid)) == 4
    assert all(float(f"{rate:.0e}") == rate for rate in grid)  # one significant digit
    assert all(curve.min_lr <= rate < curve.min_loss_lr <= curve.max_lr for rate in grid)
    if curve.divergence_lr is not None:
        assert max(grid) < curve.divergence_lr
    override = curve.grid_override()
    assert override.startswith("--set 'grid.learning_rate=[") and override.endswith("]'")
    assert tuple(json.loads(override.split("=", 1)[1].strip("'"))) == grid


def test_a_huge_max_lr_stops_the_test_at_the_divergence(noisy: DataConfig) -> None:
    """The cell's own rate (1e-7) would never diverge: the rates the callback sets are used,
    under JAX's compiled training step too."""
    result = find_learning_rate(_config(noisy), min_lr=1e-3, max_lr=1e20, steps=30)
    assert result.stopped_early in ("diverged", "non-finite")
    assert 2 <= len(result.rows) < 30
    last = result.rows[-1]
    assert result.divergence_lr == last.learning_rate
    if result.stopped_early == "diverged":
        assert last.smoothed_loss > 4 * min(row.smoothed_loss for row in result.rows[:-1])
    else:
        assert not math.isfinite(last.loss)
    assert all(math.isfinite(row.smoothed_loss) for row in result.curve)


def test_the_test_starts_from_the_cells_model_and_batches_and_repeats_exactly(
    noisy: DataConfig, tmp_path: Path
) -> None:
    # 20 steps over 10 batches a pass: the second pass takes the cell's second epoch's order.
    config = _config(noisy, seed=3)
    first = find_learning_rate(config, min_lr=1e-5, max_lr=1e-2, steps=20)
    assert len(first.rows) == 20 and first.stopped_early is None
    assert first.rows[-1].learning_rate == 1e-2 and first.divergence_lr is None
    cell = set_up_cell(config)
    images, labels = cell.train_feed[0]
    # The first batch's loss is taken before any update: the cell's initial model on its batch.
    initial_loss = cell.model.evaluate(images, labels, verbose=0)[0]
    assert first.rows[0].loss == pytest.approx(initial_loss, rel=1e-5)

    paths = [tmp_path / f"{name}.csv" for name in ("first", "again", "other")]
    write_lr_find_csv(first, paths[0])
    write_lr_find_csv(find_learning_rate(config, min_lr=1e-5, max_lr=1e-2, steps=20), paths[1])
    other_seed = _config(noisy, seed=4)
    write_lr_find_csv(find_learning_rate(other_seed, min_lr=1e-5, max_lr=1e-2, steps=20), paths[2])
    assert paths[1].read_bytes() == paths[0].read_bytes()
    assert paths[2].read_bytes() != paths[0].read_bytes()
    with open(paths[0]) as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["step", "learning_rate", "loss", "smoothed_loss"]
    assert [float(row["loss"]) for row in rows] == [row.loss for row in first.rows]
    assert [int(row["step"]) for row in rows] == list(range(1, 21))


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"min_lr": 0.1, "max_lr": 0.01}, "--min"),
        ({"min_lr": 1e-3, "max_lr": 1e-3}, "--min"),
        ({"min_lr": 0.0}, "--min"),
        ({"min_lr": -1e-4}, "--min"),
        ({"min_lr": math.nan}, "--min"),
        ({"max_lr": math.inf}, "--max"),
        ({"max_lr": "1"}, "--max"),
        ({"steps": 9}, "--steps"),
        ({"steps": 50.0}, "--steps"),
    ],
)
def test_a_bad_range_is_refused_at_once_naming_the_flag(
    options: dict[str, Any], flag: str
) -> None:
    # The data folder does not exist: the range is checked before anything is loaded.
    config = _config(DataConfig("/nonexistent/lr_find"))
    with pytest.raises(InputError, match=flag) as error:
        find_learning_rate(config, **options)
    assert "\n" not in str(error.value) and "e.g." in str(error.value)


def _result(rates: np.ndarray, smoothed: np.ndarray, stopped: str | None = None) -> LrFindResult:
    """A result with a made-up curve, as if the run had recorded it."""
    rows = tuple(
        LrFindRow(step, float(rate), float(loss), float(loss))
        for step, (rate, loss) in enumerate(zip(rates, smoothed, strict=True), start=1)
    )
    return LrFindResult(
        config=_config(DataConfig("unused")),
        min_lr=float(rates[0]),
        max_lr=float(rates[-1]),
        steps=len(rows),
        rows=rows,
        stopped_early=stopped,
    )


def _falling(rates: np.ndarray, rise_from: float) -> np.ndarray:
    """Steepest at 1e-3, rising again past ``rise_from`` (log10 of the rate)."""
    x = np.log10(rates)
    return 1 - 0.5 * np.tanh(2 * (x + 3)) + 2 * np.maximum(0, x - rise_from) ** 2


def test_the_grid_is_half_decades_around_the_steepest_descent() -> None:
    rates = np.geomspace(1e-6, 1.0, 61)
    result = _result(rates, _falling(rates, -1.0))
    assert result.steepest_lr == pytest.approx(1e-3)
    assert result.min_loss_lr == pytest.approx(0.1)
    assert result.suggested_grid() == (0.006, 0.002, 0.0006, 0.0002)
    assert result.grid_override() == "--set 'grid.learning_rate=[0.006, 0.002, 0.0006, 0.0002]'"


def test_the_grid_moves_down_below_a_near_loss_minimum() -> None:
    rates = np.geomspace(1e-6, 1.0, 61)
    result = _result(rates, _falling(rates, -2.5))
    assert result.steepest_lr == pytest.approx(1e-3)
    assert result.min_loss_lr == pytest.approx(10**-2.4)
    # Centred on 1e-3 the top rate would be 0.006, above the minimum at 0.004.
    assert result.suggested_grid() == (0.003, 0.001, 0.0004, 0.0001)


def test_a_fall_back_from_a_spike_past_the_minimum_is_no_descent() -> None:
    # Seen on real images: single batches with losses of 20 to 80 lift the smoothed loss, which
    # then falls back, steeper than the real descent; the test goes on as long as it stays
    # below 4 times the minimum.
    rates = np.geomspace(1e-6, 1.0, 61)
    smoothed = _falling(rates, -1.0)
    smoothed[-8:] = np.linspace(2.0, 1.0, 8)
    result = _result(rates, smoothed)
    assert result.steepest_lr == pytest.approx(1e-3)
    assert result.suggested_grid() == (0.006, 0.002, 0.0006, 0.0002)


def test_noise_at_the_start_is_no_descent() -> None:
    # The first averages hold few batches: a dip there, steeper than the real descent, lies in
    # the first tenth of the steps, which the search skips (as fastai's lr_find does).
    rates = np.geomspace(1e-6, 1.0, 200)
    smoothed = _falling(rates, -1.0)
    smoothed[8:11] -= [0.2, 0.4, 0.2]
    result = _result(rates, smoothed)
    assert result.warmup == 20
    assert result.steepest_lr == pytest.approx(1e-3, rel=0.05)


def test_a_loss_still_falling_at_max_is_said() -> None:
    rates = np.geomspace(1e-6, 1e-3, 61)
    assert _result(rates, _falling(rates, 0.0)).still_falling
    turned = np.geomspace(1e-6, 1.0, 61)
    assert not _result(turned, _falling(turned, -1.0)).still_falling


def _never_falling() -> LrFindResult:
    return _result(np.geomspace(1e-6, 1.0, 30), np.linspace(0.7, 0.9, 30))


def _diverged_at_once() -> LrFindResult:
    return _result(np.geomspace(1e-6, 1.0, 30)[:3], np.array([0.7, 0.6, 9.0]), "diverged")


def _narrow() -> LrFindResult:
    """Falls fastest at step 11, lowest at step 21 (1.6e-3): below it only 1e-3 has one digit."""
    steps = np.arange(30.0)
    smoothed = 1 - 0.5 * np.tanh(steps - 10) + 0.01 * np.maximum(0, steps - 20)
    return _result(np.geomspace(1e-3, 2e-3, 30), smoothed)


@pytest.mark.parametrize(
    ("made", "words"),
    [
        (_never_falling, "never fell"),
        (_diverged_at_once, "diverged after 3 steps"),
        (_narrow, "fewer than 4"),
    ],
)
def test_no_grid_is_suggested_from_a_curve_that_gives_none(
    made: Callable[[], LrFindResult], words: str
) -> None:
    result = made()
    with pytest.raises(InputError, match=words) as error:
        result.suggested_grid()
    assert "--min" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_inception_v3_goes_through_the_same_path_at_75_px(make_dataset, cache_dir: str) -> None:
    root = make_dataset(parts={"train": (6, 6), "val": (1, 1), "test": (1, 1)}).root
    config = CellConfig(
        data=DataConfig(str(root), split="kaggle", cache_dir=cache_dir),
        learning_rate=1e-3,
        seed=0,
        out_dir="unused",
        batch_size=4,
        image_size=75,
        weights="none",
        backend=BACKEND,
    )
    result = find_learning_rate(config, min_lr=1e-6, max_lr=1e-3, steps=10)
    assert result.config.model == "inception_v3" and result.stopped_early is None
    assert [row.learning_rate for row in result.rows] == pytest.approx(
        np.geomspace(1e-6, 1e-3, 10).tolist()
    )
    assert all(math.isfinite(row.loss) for row in result.rows)
