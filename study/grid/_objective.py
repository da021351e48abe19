"""The objective a worker runs: one grid cell through the trainer, its record kept on the trial."""

from __future__ import annotations

import contextlib
import logging
import math
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from storage import call_reconnecting
from study.grid import _attrs
from study.grid._artifacts import artifact_store, keep_traceback, study_folder, upload_cell_files
from study.spec import StudySpec, cell_config, cell_key
from trainer import HISTORY_COLUMNS, json_safe

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts.protocol import ArtifactStore

    from trainer import CellConfig

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

    The cell's files go to ``<study folder>/<cell key>`` (``study_folder``: named by the study's
    id). A trial that raises leaves its traceback there as ``traceback-trial-<number>.txt``,
    also uploaded as a trial artifact, before the error goes on to the worker.

    Note:
        A diverged cell is a result of its learning rate, not an error: the trial completes with
        ``diverged = true`` and returns the validation accuracy measured after divergence (a NaN
        prediction counts as NORMAL, as in Keras's accuracy, so it is a number). Optuna refuses
        NaN for a complete trial; only an empty validation part could give one, and that fails
        the trial.

        A cell whose out_dir holds a checkpoint (an earlier try was killed) resumes from it.

    Args:
        spec: The study spec (as stored in the study, with this machine's locations).
    """

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec

    def __call__(self, trial: optuna.Trial) -> float:
        study = self.spec.study
        # The trial's own grid: after `lrstudy extend` it holds values this spec may not know.
        system = trial.storage.get_trial_system_attrs(trial._trial_id)
        grid = system.get(_attrs.SEARCH_SPACE) or self.spec.grid
        params = {
            axis: trial.suggest_categorical(axis, list(grid[axis])) for axis in self.spec.grid
        }
        folder = study_folder(study.artifacts, study.name, _attrs.study_uid(trial.study))
        key = cell_key(params)
        store = None
        try:  # a cell that cannot even be configured keeps its traceback too
            config = cell_config(self.spec, params, folder=folder)
            store = artifact_store(folder, study.artifact_store)
            return self._train(trial, key, config, store)
        except Exception:
            header = f"study {study.name}, trial {trial.number}, cell {key}\n\n"
            keep_traceback(trial, store, folder / key, header + traceback.format_exc())
            raise

    def _train(
        self, trial: optuna.Trial, key: str, config: CellConfig, store: ArtifactStore
    ) -> float:
        from trainer._train import train_cell

        study = self.spec.study
        _attrs.record_cell(trial, key, config.epochs, config.out_dir)
        _logger.info("trial %d, cell %s: training into %s", trial.number, key, config.out_dir)

        history: dict[str, list[Any]] = {name: [] for name in HISTORY_COLUMNS}

        def report_epoch(epoch: int, val_accuracy: float) -> None:
            _attrs.record_history(trial, history)
            if math.isfinite(val_accuracy):
                trial.report(val_accuracy, step=epoch)

        def on_saved(epoch: int, logs: dict[str, Any]) -> None:
            # Runs once the epoch's checkpoint is on disk, beside the next epoch's training.
            for name in HISTORY_COLUMNS:
                history[name].append(json_safe(logs[name]))
            # Both writes are safe to repeat, so a database outage delays them instead of
            # failing a trial that trains on regardless.
            call_reconnecting(
                lambda: report_epoch(epoch, logs["val_accuracy"]),
                what=f"recording epoch {epoch} of trial {trial.number}",
            )

        with _trial_in_trainer_lines(trial.number):
            result = train_cell(config, on_saved=on_saved, resume=True)
        call_reconnecting(
            lambda: _attrs.record_result(trial, result.to_dict(), reduce=study.reduce),
            what=f"recording the result of trial {trial.number}",
        )
        upload_cell_files(trial, store, config.out_dir)
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


class TrialLogTag(logging.Filter):
    """Prefixes the trainer's log lines with the trial being trained, for a handler's filter.

    The trainer knows cells, not trials, yet each epoch line should say which worker (the
    launcher's prefix), trial, cell and epoch. The CLI, which owns the handlers, installs it;
    the objective says which trial trains (a worker trains one at a time, on any thread).
    """

    trial: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        prefix = f"trial {self.trial}: "
        trainer = record.name.partition(".")[0] == "trainer"
        if self.trial is not None and trainer and not str(record.msg).startswith(prefix):
            record.msg = prefix + str(record.msg)  # once, however many handlers it passes
        return True


@contextlib.contextmanager
def _trial_in_trainer_lines(number: int) -> Iterator[None]:
    TrialLogTag.trial = number
    try:
        yield
    finally:
        TrialLogTag.trial = None
