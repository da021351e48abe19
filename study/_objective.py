"""The objective a worker runs: one grid cell through the trainer, its record kept on the trial."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage import call_reconnecting
from study._grid import cell_key
from study._spec import StudySpec
from trainer import HISTORY_COLUMNS, InputError, json_safe

if TYPE_CHECKING:
    import optuna

    from trainer._config import CellConfig
    from trainer._train import CellResult

_logger = logging.getLogger(__name__)


def cell_config(spec: StudySpec, params: dict[str, Any]) -> CellConfig:
    """The trainer config of one grid cell; grid axes override ``[train]`` keys.

    Its ``out_dir`` is ``<artifacts>/<study name>/<cell key>``, the same on every worker, so a
    cell retried anywhere that shares the artifacts folder resumes from its last checkpoint.
    """
    from trainer._config import CellConfig
    from trainer._dataset import DataConfig

    if spec.data.root is None:
        raise InputError(
            "data.root is not set: the study does not know where the images are. "
            "Fix: pass --data DIR or set root in [data]."
        )
    data = DataConfig(
        root=spec.data.root,
        split=spec.data.split,
        split_seed=spec.data.split_seed,
        ratios=spec.data.ratios,
        limit_per_class=spec.data.limit_per_class,
        cache_dir=spec.data.cache_dir,
        skip_bad=spec.data.skip_bad,
    )
    train = {
        "epochs": spec.train.epochs,
        "batch_size": spec.train.batch_size,
        "eval_batch_size": spec.train.eval_batch_size,
        "image_size": spec.train.image_size,
        "optimizer": spec.train.optimizer,
        "weights": spec.train.weights,
        "model": spec.train.model,
        "test_weights": spec.train.test_weights,
        "deterministic": spec.train.deterministic,
        "mixed_precision": spec.train.mixed_precision,
        "jit_compile": spec.train.jit_compile,
    }
    train.update({axis: value for axis, value in params.items() if axis in train})
    out_dir = Path(spec.study.artifacts) / spec.study.name / cell_key(params)
    return CellConfig(
        data=data,
        learning_rate=params["learning_rate"],
        seed=params["seed"],
        out_dir=str(out_dir),
        **train,
    )


def check_cells(spec: StudySpec) -> None:
    """Build every cell's config now, so a bad combination fails before any worker starts."""
    for params in spec.cells():
        try:
            cell_config(spec, params)
        except InputError as error:
            raise InputError(f"cell {cell_key(params)}: {error}") from None


class CellObjective:
    """Train the cell that the study's sampler hands a trial, and return its objective value.

    Each grid axis is suggested with ``trial.suggest_categorical(axis, values)``, so the
    ``GridSampler`` of the study picks the cell. Every epoch the trial gets ``val_accuracy`` as
    its intermediate value (step = epoch, from 1) and an updated ``history`` user attribute;
    at the end the final, best and test metrics, ``diverged``, device and duration are stored
    too (JSON-safe; undefined numbers are None). Host and worker id are the worker's to record
    (``run_worker``), as it knows them also for a trial that fails before training starts.

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
        from study._dashboard import artifact_store, record_trial
        from trainer._train import train_cell

        params = {
            axis: trial.suggest_categorical(axis, list(values))
            for axis, values in self.spec.grid.items()
        }
        config = cell_config(self.spec, params)
        key = cell_key(params)
        trial.set_user_attr("cell", key)
        trial.set_user_attr("epochs", config.epochs)
        trial.set_user_attr("out_dir", config.out_dir)
        _logger.info("trial %d, cell %s: training into %s", trial.number, key, config.out_dir)

        history: dict[str, list[Any]] = {name: [] for name in HISTORY_COLUMNS}
        reported: set[int] = set()

        def report_epoch(epoch: int, val_accuracy: float) -> None:
            trial.set_user_attr("history", history)
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
            lambda: self._record(trial, result, reported),
            what=f"recording the result of trial {trial.number}",
        )
        store = artifact_store(self.spec.study.artifacts, self.spec.study.name)
        record_trial(trial, store, reduce=self.spec.study.reduce)
        value = (result.final if self.spec.study.reduce == "last" else result.best)[
            self.spec.study.objective
        ]
        if not math.isfinite(value):
            raise InputError(
                f"cell {key}: {self.spec.study.objective} is {value} (is the validation part "
                "empty?); check the split with `lrstudy data check`."
            )
        _logger.info(
            "trial %d, cell %s: %s %.4f (%s epoch)%s",
            trial.number,
            key,
            self.spec.study.objective,
            value,
            self.spec.study.reduce,
            ", diverged" if result.diverged else "",
        )
        return float(value)

    @staticmethod
    def _record(trial: optuna.Trial, result: CellResult, reported: set[int]) -> None:
        record = result.to_dict()
        # A resumed try saw only its own epochs; the result has them all.
        history = {name: [row[name] for row in record["history"]] for name in HISTORY_COLUMNS}
        for row in record["history"]:
            if row["epoch"] not in reported and row["val_accuracy"] is not None:
                trial.report(row["val_accuracy"], step=row["epoch"])
        trial.set_user_attr("history", history)
        for name in ("final", "best", "test", "diverged", "diverged_epoch", "epochs_run"):
            trial.set_user_attr(name, record[name])
        trial.set_user_attr("predictions_path", record["predictions_path"])
        trial.set_user_attr("checkpoint_path", record["checkpoint_path"])
        trial.set_user_attr("device", record["environment"].get("device"))
        trial.set_user_attr("backend", record["environment"].get("backend"))
        trial.set_user_attr("duration_s", record["seconds"])
