"""The learning-rate range test (Smith 2017; fastai's ``lr_find``): where a grid should lie.

One model trains for a few hundred batches while its learning rate rises geometrically; the
loss per batch, against the rate, shows where training starts to work and where it breaks.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from trainer._atomic import write_atomic
from trainer._config import CellConfig
from trainer._errors import InputError
from trainer._train import _progress_bar, set_up_cell

if TYPE_CHECKING:
    import keras

_logger = logging.getLogger(__name__)

LR_FIND_FILE = "lr_find.csv"
CSV_COLUMNS = ("step", "learning_rate", "loss", "smoothed_loss")
SMOOTHING = 0.98
"""Weight of the past in the smoothed loss, as fastai's: about the last 50 batches count."""
DIVERGENCE_FACTOR = 4.0
"""The test stops once the smoothed loss exceeds this many times its minimum so far."""
WARMUP_FRACTION = 0.1
"""Share of the steps skipped when looking for the steepest descent, as fastai's ``lr_find``:
the first averages hold few batches, and their noise would read as slope."""
WARMUP_POINTS = 5
"""The fewest points skipped so, for short tests."""
END_POINTS = 5
"""A lowest loss within this many points of ``max_lr`` was still falling there (fastai leaves
out as many)."""
MIN_STEPS = 10
GRID_SIZE = 4
GRID_STEP_DECADES = 0.5
"""Spacing of the suggested rates: half a decade, as 0.01, 0.003, 0.001, 0.0003."""


class LrFindRow(NamedTuple):
    """One batch of the test; ``step`` 1 is the first batch, trained at ``min_lr``."""

    step: int
    learning_rate: float
    loss: float
    smoothed_loss: float


@dataclass(frozen=True)
class LrFindResult:
    """The recorded curve of one range test and the rates read from it.

    ``rows`` run to ``steps``, or end with the batch at which the test stopped: ``stopped_early``
    is then ``"diverged"`` (smoothed loss above ``DIVERGENCE_FACTOR`` times its minimum) or
    ``"non-finite"`` (a NaN or infinite loss), else None. ``config`` is the cell as given; its
    ``learning_rate`` played no part.
    """

    config: CellConfig
    min_lr: float
    max_lr: float
    steps: int
    rows: tuple[LrFindRow, ...]
    stopped_early: str | None

    @property
    def curve(self) -> tuple[LrFindRow, ...]:
        """The rows before the stop (all of them if none): every smoothed loss there is finite."""
        return self.rows[:-1] if self.stopped_early else self.rows

    @property
    def divergence_lr(self) -> float | None:
        """The rate of the batch at which the test stopped; None if it ran to ``max_lr``."""
        return self.rows[-1].learning_rate if self.stopped_early else None

    @property
    def _lowest(self) -> int | None:
        """The index in ``curve`` of the lowest smoothed loss; None if the curve is empty."""
        curve = self.curve
        return min(range(len(curve)), key=lambda index: curve[index].smoothed_loss, default=None)

    @property
    def min_loss_lr(self) -> float | None:
        """The rate of the lowest smoothed loss; None if the very first batch failed."""
        lowest = self._lowest
        return None if lowest is None else self.curve[lowest].learning_rate

    @property
    def warmup(self) -> int:
        """Points skipped at the start when looking for the steepest descent."""
        return max(WARMUP_POINTS, int(self.steps * WARMUP_FRACTION))

    @property
    def still_falling(self) -> bool:
        """True when the test ran to ``max_lr`` with its lowest loss among the last points: the
        descent may go on past ``--max``, and the grid read from it would lie too low."""
        lowest = self._lowest
        if self.stopped_early or lowest is None:
            return False
        return lowest >= len(self.curve) - END_POINTS

    @property
    def steepest_lr(self) -> float | None:
        """The rate where the smoothed loss falls fastest per decade of rate, after the first
        ``warmup`` points and up to the lowest loss (a fall back from a spike beyond it is no
        descent); None if that stretch is too short or never falls."""
        warmup, lowest = self.warmup, self._lowest
        curve = () if lowest is None else self.curve[: lowest + 1]
        if len(curve) < warmup + 2:
            return None
        slopes = np.gradient(
            [row.smoothed_loss for row in curve], [math.log10(row.learning_rate) for row in curve]
        )[warmup:]
        steepest = int(np.argmin(slopes))
        if slopes[steepest] >= 0:
            return None
        return curve[warmup + steepest].learning_rate

    def suggested_grid(self) -> tuple[float, ...]:
        """Four rates, highest first, half a decade apart around the steepest descent (closer
        where the range below the loss minimum is shorter than that).

        Each has one significant digit and lies in [``min_lr``, loss minimum): below the rate
        of the lowest loss, hence below the divergence point too. Where that range is short the
        rates move down from the steepest point, then close up.

        Raises:
            InputError: The curve gives no such four rates, with what to change.
        """
        steepest, ceiling = self.steepest_lr, self.min_loss_lr
        if steepest is None or ceiling is None:
            raise InputError(self._no_descent())
        candidates = _one_digit_rates(self.min_lr, ceiling)
        rates: list[float] = []
        if len(candidates) >= GRID_SIZE:
            low, high = math.log10(self.min_lr), math.log10(ceiling)
            spacing = min(GRID_STEP_DECADES, (high - low) / (GRID_SIZE - 1))
            half = spacing * (GRID_SIZE - 1) / 2
            centre = min(max(math.log10(steepest), low + half), high - half)
            for index in range(GRID_SIZE):
                target = centre + half - index * spacing
                rates.append(min(candidates, key=lambda rate: abs(math.log10(rate) - target)))
        if len(set(rates)) < GRID_SIZE:
            raise InputError(
                f"lr-find: fewer than {GRID_SIZE} distinct one-digit rates lie between --min "
                f"{self.min_lr:g} and the loss minimum at {ceiling:g}; lower --min, e.g. "
                f"--min {self.min_lr / 100:g}"
            )
        return tuple(rates)

    def grid_override(self) -> str:
        """The suggestion as a ``lrstudy`` option, e.g.
        ``--set 'grid.learning_rate=[0.01, 0.003, 0.001, 0.0003]'``."""
        return f"--set 'grid.learning_rate=[{', '.join(map(repr, self.suggested_grid()))}]'"

    def _no_descent(self) -> str:
        if len(self.curve) < self.warmup + 2:
            return (
                f"lr-find: the loss diverged after {len(self.rows)} steps, at rate "
                f"{self.divergence_lr:g}; lower --min (now {self.min_lr:g})"
            )
        return (
            f"lr-find: the smoothed loss never fell between --min {self.min_lr:g} and --max "
            f"{self.max_lr:g}; lower --min, or check that the data and labels are right"
        )


def find_learning_rate(
    config: CellConfig,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    steps: int = 200,
    verbose: bool = False,
) -> LrFindResult:
    """Run the learning-rate range test on the model and data of one grid cell.

    The model, weights, image size, batch size, optimizer, backend, initial state and batch
    order are the cell's (``set_up_cell``, seeded with ``config.seed``); only the rate differs:
    it rises geometrically, batch ``i`` (from 0) training at
    ``min_lr * (max_lr / min_lr) ** (i / (steps - 1))``, from ``min_lr`` to ``max_lr``.
    ``config.learning_rate`` is ignored, as are ``epochs``, ``out_dir``, ``eval_batch_size``
    and ``test_weights``: nothing is validated or tested, nothing written. A training part shorter
    than ``steps`` batches is passed over again, each pass in the order of the cell's next
    epoch. The smoothed loss is an exponential moving average (``SMOOTHING``) with bias
    correction, so early points are not pulled towards zero; the test stops once it exceeds
    ``DIVERGENCE_FACTOR`` times its minimum or a loss is not finite.

    Args:
        config: The cell whose training is probed.
        min_lr: The first rate; finite and > 0. Defaults to `1e-7`.
        max_lr: The last rate; finite and > ``min_lr``. Defaults to `1.0`.
        steps: Batches to train, at least ``MIN_STEPS``. Defaults to `200`.
        verbose: Show a progress bar per pass on stdout. Defaults to `False`.

    Raises:
        InputError: A bad range or step count (naming ``--min``, ``--max`` or ``--steps``), or
            what ``set_up_cell`` raises.
    """
    _check_range(min_lr, max_lr, steps)
    # One step per call: the rate is set before every batch, which a multi-step call would skip.
    cell = set_up_cell(dataclasses.replace(config, learning_rate=min_lr, steps_per_execution=1))
    recorder = _Recorder(min_lr, max_lr, steps)
    passes = math.ceil(steps / len(cell.train_feed))
    callbacks = [_rate_callback(recorder)]
    if verbose:
        callbacks.append(_progress_bar(passes))
    for epoch in range(passes):
        if recorder.done:
            break
        cell.train_feed.set_epoch(epoch)
        cell.model.fit(
            cell.train_feed,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,  # the feed orders the batches, as in a cell
            verbose=0,
            callbacks=callbacks,
        )
    result = LrFindResult(
        config=config,
        min_lr=min_lr,
        max_lr=max_lr,
        steps=steps,
        rows=tuple(recorder.rows),
        stopped_early=recorder.stopped,
    )
    end = (
        f"stopped ({result.stopped_early}) at {result.divergence_lr:g}"
        if result.stopped_early
        else f"reached {max_lr:g}"
    )
    _logger.info(
        "lr-find %s seed=%d: %d steps from %g, %s; steepest descent at %s, lowest loss at %s",
        config.model, config.seed, len(result.rows), min_lr, end,
        _rate_text(result.steepest_lr), _rate_text(result.min_loss_lr),
    )  # fmt: skip
    return result


def write_csv(result: LrFindResult, path: str | os.PathLike[str]) -> None:
    """Write the rows as ``step,learning_rate,loss,smoothed_loss`` (``LR_FIND_FILE`` by name);
    repr keeps every digit, so equal runs give equal bytes."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in result.rows:
        writer.writerow([row.step, *map(repr, row[1:])])
    write_atomic(path, text.getvalue())


class _Recorder:
    """The schedule and the record of a test, apart from Keras."""

    def __init__(self, min_lr: float, max_lr: float, steps: int) -> None:
        # geomspace ends exactly on both rates.
        self.rates = [float(rate) for rate in np.geomspace(min_lr, max_lr, steps)]
        self.rows: list[LrFindRow] = []
        self.stopped: str | None = None
        self._average = 0.0
        self._lowest = math.inf

    @property
    def done(self) -> bool:
        return self.stopped is not None or len(self.rows) == len(self.rates)

    def next_rate(self) -> float:
        return self.rates[len(self.rows)]

    def record(self, loss: float) -> None:
        """Add the loss of the batch just trained at ``next_rate()``; stop if it broke."""
        step = len(self.rows) + 1
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * loss
        smoothed = self._average / (1 - SMOOTHING**step)
        self.rows.append(LrFindRow(step, self.rates[step - 1], loss, smoothed))
        if not math.isfinite(loss):
            self.stopped = "non-finite"
        elif smoothed > DIVERGENCE_FACTOR * self._lowest:
            self.stopped = "diverged"
        self._lowest = min(self._lowest, smoothed)


def _rate_callback(recorder: _Recorder) -> keras.callbacks.Callback:
    """Sets each batch's rate and records its loss, on every backend.

    Under JAX the training state lives outside the model between steps; reading
    ``self.model`` in a callback writes it back, and the next step reads it again, so the
    assigned rate and the reset metrics take effect at that very step.
    """
    import keras

    class RangeTest(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            model = self.model
            model.reset_metrics()  # Keras logs the epoch's running mean; we want this batch's
            model.optimizer.learning_rate.assign(recorder.next_rate())

        def on_train_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
            recorder.record(float(logs["loss"]))
            if recorder.done:
                self.model.stop_training = True

    return RangeTest()


def _check_range(min_lr: float, max_lr: float, steps: int) -> None:
    for flag, value, example in (("--min", min_lr, "1e-07"), ("--max", max_lr, "1")):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise InputError(
                f"{flag} must be a finite learning rate > 0; got {value!r}; use e.g. "
                f"{flag} {example}"
            )
    if min_lr >= max_lr:
        raise InputError(
            f"--min ({min_lr:g}) must be below --max ({max_lr:g}); swap them, or use e.g. "
            "--min 1e-07 --max 1"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < MIN_STEPS:
        raise InputError(
            f"--steps must be an integer >= {MIN_STEPS}; got {steps!r}; use e.g. --steps 200"
        )


def _one_digit_rates(low: float, high: float) -> list[float]:
    """Every rate ``d * 10**k`` (d in 1..9) in [low, high), as floats that repr as typed."""
    decades = range(math.floor(math.log10(low)), math.floor(math.log10(high)) + 1)
    rates = (float(f"{digit}e{power}") for power in decades for digit in range(1, 10))
    return [rate for rate in rates if low <= rate < high]


def _rate_text(rate: float | None) -> str:
    return "none" if rate is None else f"{rate:g}"
