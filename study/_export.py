"""A study's results as the paper reports them: per-trial rows and per-learning-rate tables.

Everything is read from the study as stock Optuna stores it (trials, their user attributes and
the grid), so a study that is still running, or has failed cells, exports what is complete and
names the cells that are not.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study._grid import cell_key, cell_states
from trainer import TEST_METRICS, InputError, json_safe

if TYPE_CHECKING:
    import optuna

    from study._stats import Comparison, Summary

FORMATS = ("md", "csv", "json")
# The flat per-trial columns, in CSV order; grid axes other than these two follow "seed".
_LEADING = ("trial", "cell", "learning_rate", "seed")
_TRAILING = (
    "state",
    "val_accuracy_last",
    "val_loss_last",
    "val_accuracy_best",
    "val_loss_best",
    "best_epoch",
    *(f"test_{name}" for name in TEST_METRICS),
    "epochs_run",
    "diverged",
    "duration_s",
    "worker_id",
    "host",
    "error",
)


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
    spec = study.user_attrs.get("spec")
    reduce = spec["study"]["reduce"] if isinstance(spec, dict) else "last"
    metric = study.metric_names[0] if study.metric_names else "objective"
    axes = _ordered_axes(list(states[0].params) if states else [])
    by_grid_id = {state.grid_id: state.params for state in states}
    trials = [
        _trial_record(trial, by_grid_id[trial.system_attrs["grid_id"]], axes)
        for trial in study.get_trials(deepcopy=False)
        if trial.system_attrs.get("grid_id") in by_grid_id
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


def render(results: StudyResults, fmt: str) -> str:
    """The export in ``fmt`` (one of ``FORMATS``)."""
    from study._markdown import to_markdown

    return {"md": to_markdown, "csv": to_csv, "json": to_json}[fmt](results)


def to_csv(results: StudyResults) -> str:
    """One row per trial; columns are ``trial_columns(results.axes)``."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=trial_columns(results.axes), lineterminator="\n")
    writer.writeheader()
    for record in results.trials:
        writer.writerow({name: _csv_value(record[name]) for name in writer.fieldnames})
    return text.getvalue()


def to_json(results: StudyResults) -> str:
    """Everything, per-epoch histories included; undefined numbers are null."""
    return json.dumps(json_safe(results.to_dict()), indent=2, allow_nan=False) + "\n"


def trial_columns(axes: list[str]) -> list[str]:
    """The CSV columns: stable names, the grid's extra axes (if any) after ``seed``."""
    extra = [axis for axis in axes if axis not in _LEADING]
    return [*_LEADING, *extra, *_TRAILING]


def write_export(results: StudyResults, out_dir: str | Path) -> tuple[list[Path], list[str]]:
    """Write ``trials.csv``, ``summary.json``, ``summary.md`` and the PNG figures.

    Returns the written files and notes on what a figure had to leave out (e.g. a missing
    predictions file).
    """
    from study._figures import write_figures
    from study._markdown import to_markdown

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"--out {str(out)!r} cannot be made a folder ({error.strerror}); "
            "pass a folder path you can write to"
        ) from None
    try:
        figures, notes = write_figures(results, out)
        written = []
        for name, text in (
            ("trials.csv", to_csv(results)),
            ("summary.json", to_json(results)),
            ("summary.md", to_markdown(results, figures, notes)),
        ):
            (out / name).write_text(text, encoding="utf-8")
            written.append(out / name)
    except OSError as error:
        raise InputError(
            f"--out {str(out)!r} cannot be written to ({error.strerror or error}); "
            "pass a folder you can write to, with free space"
        ) from None
    return written + figures, notes


def flat_metrics(user_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The flat per-trial numbers from the nested ``final``, ``best`` and ``test`` attributes."""
    final = user_attrs.get("final") or {}
    best = user_attrs.get("best") or {}
    test = user_attrs.get("test") or {}
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
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return {
        "trial": trial.number,
        "cell": cell_key(params),
        **{axis: params[axis] for axis in axes},
        "state": trial.state.name,
        **flat_metrics(attrs),
        "epochs_run": attrs.get("epochs_run"),
        "diverged": attrs.get("diverged"),
        "duration_s": duration,
        "worker_id": attrs.get("worker_id"),
        "host": attrs.get("host"),
        "error": attrs.get("error"),
        "value": trial.value,
        "params": params,
        "history": attrs.get("history"),
        "final": attrs.get("final"),
        "best": attrs.get("best"),
        "test": attrs.get("test"),
        "diverged_epoch": attrs.get("diverged_epoch"),
        "predictions_path": attrs.get("predictions_path"),
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
    from study._stats import summarize  # SciPy takes a second: `lrstudy status` needs none

    return summarize([v if isinstance(v, (int, float)) else None for v in values])


def _comparisons(groups: list[Group]) -> dict[str, Comparison | None]:
    from study._stats import compare

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


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()
