"""A study's results as typed records: one per trial, and one group per learning rate.

Everything is read from the study as stock Optuna stores it (trials, their attributes through
``read_trial``, the grid), so a study that is still running, or has failed cells, yields what
is complete and names the cells that are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from study.grid import TrialRecord, _attrs, cell_states, read_trial
from study.spec import cell_key
from trainer import TEST_METRICS

if TYPE_CHECKING:
    import optuna

    from study.results._stats import Comparison, Summary


@dataclass(frozen=True)
class Group:
    """The complete cells of one learning rate (and any other non-seed axes) over seeds.

    ``per_seed`` maps a metric (``val_accuracy``, ``val_loss``) to seed -> value, the value
    the study's objective uses (last or best epoch); None where the cell is not complete.
    ``summaries`` holds ``val_accuracy``, ``val_loss`` and ``test_<metric>`` over seeds.
    """

    label: str
    params: dict[str, Any]
    trials: list[int]
    per_seed: dict[str, dict[Any, float | None]]
    summaries: dict[str, Summary]
    diverged: list[Any]


@dataclass(frozen=True)
class StudyResults:
    """Everything an export holds; ``comparisons`` maps a summary name to its sentence data."""

    study: str
    metric: str
    reduce: str
    spec: dict[str, Any] | None
    axes: list[str]
    seeds: list[Any]
    cells: int
    missing: list[dict[str, Any]]
    trials: list[dict[str, Any]]
    groups: list[Group]
    comparisons: dict[str, Comparison | None]

    @property
    def complete(self) -> int:
        return self.cells - len(self.missing)

    def headline(self) -> str:
        """The plain sentence on the objective: which rate leads and whether that is real."""
        comparison = self.comparisons.get("val_accuracy")
        if comparison is not None:
            return comparison.sentence
        return "Fewer than two learning rates have a validation accuracy yet; nothing to compare."

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "metric": self.metric,
            "reduce": self.reduce,
            "spec": self.spec,
            "axes": self.axes,
            "cells": self.cells,
            "complete": self.complete,
            "missing": self.missing,
            "headline": self.headline(),
            "comparisons": {
                name: None if c is None else c.to_dict() for name, c in self.comparisons.items()
            },
            "groups": [
                {
                    "label": g.label,
                    "params": g.params,
                    "trials": g.trials,
                    "per_seed": {
                        metric: [{"seed": seed, "value": value} for seed, value in values.items()]
                        for metric, values in g.per_seed.items()
                    },
                    "summaries": {name: s.to_dict() for name, s in g.summaries.items()},
                    "diverged_seeds": g.diverged,
                }
                for g in self.groups
            ],
            "trials": self.trials,
        }


def collect(study: optuna.Study) -> StudyResults:
    """Read ``study`` (made by ``create_grid_study``) into per-trial records and per-rate tables.

    Only the COMPLETE trial of each cell enters the tables; every trial, of any state, is a row.
    """
    states = cell_states(study)
    spec = study.user_attrs.get(_attrs.SPEC)
    reduce = spec["study"]["reduce"] if isinstance(spec, dict) else "last"
    metric = study.metric_names[0] if study.metric_names else "objective"
    axes = _ordered_axes(list(states[0].params) if states else [])
    by_grid_id = {state.grid_id: state.params for state in states}
    trials = [
        _trial_record(trial, by_grid_id[trial.system_attrs[_attrs.GRID_ID]], axes)
        for trial in study.get_trials(deepcopy=False)
        if trial.system_attrs.get(_attrs.GRID_ID) in by_grid_id
    ]
    records = {record["trial"]: record for record in trials}
    missing = [
        {
            "cell": state.key,
            "state": state.state,
            "trial": state.trial_number,
            "retries": state.retries,
            "error": state.error,
        }
        for state in states
        if state.state != "complete"
    ]
    group_axes = [axis for axis in axes if axis != "seed"]
    seeds = list(dict.fromkeys(state.params["seed"] for state in states))
    members: dict[tuple[Any, ...], list[tuple[Any, dict[str, Any] | None]]] = {}
    for state in states:
        record = records[state.trial_number] if state.state == "complete" else None
        key = tuple(state.params[axis] for axis in group_axes)
        members.setdefault(key, []).append((state.params["seed"], record))
    groups = [
        _group(dict(zip(group_axes, key, strict=True)), cells, reduce)
        for key, cells in members.items()
    ]
    return StudyResults(
        study=study.study_name,
        metric=metric,
        reduce=reduce,
        spec=spec if isinstance(spec, dict) else None,
        axes=axes,
        seeds=seeds,
        cells=len(states),
        missing=missing,
        trials=trials,
        groups=groups,
        comparisons=_comparisons(groups),
    )


def flat_metrics(record: TrialRecord) -> dict[str, Any]:
    """The flat per-trial numbers from the nested ``final``, ``best`` and ``test`` records."""
    final = record.final or {}
    best = record.best or {}
    test = record.test or {}
    return {
        "val_accuracy_last": final.get("val_accuracy"),
        "val_loss_last": final.get("val_loss"),
        "val_accuracy_best": best.get("val_accuracy"),
        "val_loss_best": best.get("val_loss"),
        "best_epoch": best.get("epoch"),
        **{f"test_{name}": test.get(name) for name in TEST_METRICS},
    }


# --- collecting -------------------------------------------------------------------------------


def _trial_record(
    trial: optuna.trial.FrozenTrial, params: dict[str, Any], axes: list[str]
) -> dict[str, Any]:
    record = read_trial(trial)
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return {
        "trial": trial.number,
        "cell": cell_key(params),
        **{axis: params[axis] for axis in axes},
        "state": record.state,
        **flat_metrics(record),
        "epochs_run": record.epochs_run,
        "diverged": record.diverged,
        "duration_s": duration,
        "worker_id": record.worker_id,
        "host": record.host,
        "error": record.error,
        "value": record.value,
        "params": params,
        "history": record.history,
        "final": record.final,
        "best": record.best,
        "test": record.test,
        "diverged_epoch": record.diverged_epoch,
        "predictions_path": record.predictions_path,
        "intermediate_values": {str(k): v for k, v in trial.intermediate_values.items()},
        "datetime_start": _iso(trial.datetime_start),
        "datetime_complete": _iso(trial.datetime_complete),
    }


def _group(
    params: dict[str, Any], cells: list[tuple[Any, dict[str, Any] | None]], reduce: str
) -> Group:
    suffix = "_last" if reduce == "last" else "_best"
    per_seed: dict[str, dict[Any, float | None]] = {"val_accuracy": {}, "val_loss": {}}
    for seed, record in cells:
        for metric in per_seed:
            per_seed[metric][seed] = None if record is None else record[metric + suffix]
    complete = [record for _, record in cells if record is not None]
    summaries = {
        metric: _summary([record[metric + suffix] for record in complete]) for metric in per_seed
    }
    for name in TEST_METRICS:
        summaries[f"test_{name}"] = _summary([record[f"test_{name}"] for record in complete])
    return Group(
        label=", ".join(
            f"{axis.replace('_', ' ')} {format_value(v)}" for axis, v in params.items()
        ),
        params=params,
        trials=[record["trial"] for record in complete],
        per_seed=per_seed,
        summaries=summaries,
        diverged=[seed for seed, record in cells if record is not None and record["diverged"]],
    )


def _summary(values: list[Any]) -> Summary:
    from study.results._stats import summarize  # SciPy takes a second: `lrstudy status` needs none

    return summarize([v if isinstance(v, (int, float)) else None for v in values])


def _comparisons(groups: list[Group]) -> dict[str, Comparison | None]:
    from study.results._stats import compare

    def over(metric: str) -> dict[str, Summary]:
        return {group.label: group.summaries[metric] for group in groups}

    return {
        "val_accuracy": compare(over("val_accuracy"), "validation accuracy"),
        "val_loss": compare(over("val_loss"), "validation loss", higher_is_better=False),
        "test_accuracy": compare(over("test_accuracy"), "test accuracy"),
    }


def _ordered_axes(axes: list[str]) -> list[str]:
    first = [axis for axis in ("learning_rate", "seed") if axis in axes]
    return first + [axis for axis in axes if axis not in first]


def format_value(value: Any) -> str:
    """A grid value as tables show it: floats in %g (0.0001, not 1e-04 or 0.00010000)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()
