"""The objective a worker runs: one grid cell through the trainer, its record kept on the trial."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from storage import call_reconnecting
from study.grid import _attrs
from study.grid._artifacts import artifact_store, upload_cell_files
from study.spec import StudySpec, cell_config, cell_key
from trainer import HISTORY_COLUMNS, json_safe

if TYPE_CHECKING:
    import optuna

_logger = logging.getLogger(__name__)


class TrialFailed(RuntimeError):
    """This trial could not give a value; unlike bad input, another try or cell may."""


class CellObjective:
    """Train the cell that the study's sampler hands a trial, and return its objective value.

    Each grid axis is suggested with ``trial.suggest_categorical(axis, values)``, so the
    ``GridSampler`` of the study picks the cell. Every epoch the trial gets ``val_accuracy`` as
    its intermediate value (step = epoch, from 1) and an updated ``history`` user attribute;
    at the end the final, best and test metrics, ``diverged``, device and duration are stored
    too (JSON-safe; undefined numbers are None), and the cell's files are uploaded to the
    study's artifact store. Host and worker id are the worker's to record (``run_worker``), as
    it knows them also for a trial that fails before training starts.

    Note:
        A diverged cell is a result of its learning rate, not an error: the trial completes with
        ``diverged = true`` and returns the validation accuracy measured after divergence (NaN
        predictions count as wrong, so it is a number). Optuna refuses NaN for a complete
        trial; only an empty validation part could give one, and that fails the trial.

        A cell whose out_dir holds a checkpoint (an earlier try was killed) resumes from it.

    Args:
        spec: The study spec (as stored in the study, with this machine's locations).
    """

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec

    def __call__(self, trial: optuna.Trial) -> float:
        from trainer._train import train_cell

        study = self.spec.study
        params = {
            axis: trial.suggest_categorical(axis, list(values))
            for axis, values in self.spec.grid.items()
        }
        config = cell_config(self.spec, params)
        key = cell_key(params)
        _attrs.record_cell(trial, key, config.epochs, config.out_dir)
        _logger.info("trial %d, cell %s: training into %s", trial.number, key, config.out_dir)

        history: dict[str, list[Any]] = {name: [] for name in HISTORY_COLUMNS}
        reported: set[int] = set()

        def report_epoch(epoch: int, val_accuracy: float) -> None:
            _attrs.record_history(trial, history)
            if math.isfinite(val_accuracy):
                trial.report(val_accuracy, step=epoch)
                reported.add(epoch)

        def on_epoch(epoch: int, logs: dict[str, Any]) -> bool:
            for name in HISTORY_COLUMNS:
                history[name].append(json_safe(logs[name]))
            # Both writes are safe to repeat, so a database outage delays them instead of
            # failing a trial that trains on regardless.
            call_reconnecting(
                lambda: report_epoch(epoch, logs["val_accuracy"]),
                what=f"recording epoch {epoch} of trial {trial.number}",
            )
            return False

        result = train_cell(config, on_epoch, resume=True)
        call_reconnecting(
            lambda: _attrs.record_result(
                trial, result.to_dict(), reported=reported, reduce=study.reduce
            ),
            what=f"recording the result of trial {trial.number}",
        )
        upload_cell_files(trial, artifact_store(study.artifacts, study.name), config.out_dir)
        value = (result.final if study.reduce == "last" else result.best)[study.objective]
        if not math.isfinite(value):
            raise TrialFailed(
                f"cell {key}: {study.objective} is {value} (is the validation part "
                "empty?); check the split with `lrstudy data check`."
            )
        _logger.info(
            "trial %d, cell %s: %s %.4f (%s epoch)%s",
            trial.number,
            key,
            study.objective,
            value,
            study.reduce,
            ", diverged" if result.diverged else "",
        )
        return float(value)
