"""A study's results as typed records: one per trial, and one group per learning rate.

Everything is read from the study as stock Optuna stores it (trials, their attributes through
``read_trial``, the grid), so a study that is still running, or has failed cells, yields what
is complete and names the cells that are not. With a ``Review`` it also reads each trial's
prediction files (from the study's artifact store) for the statistics that need every image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from study.grid import TrialRecord, _attrs, cell_states, read_trial
from study.spec import cell_key
from trainer import TEST_METRICS

if TYPE_CHECKING:
    import optuna

    from study.results._predictions import TrialPredictions
    from study.results._reviewer import Review
    from study.results._stats import PairedTest, Ranking, Summary

# Tested over seeds for every pair of groups, and ranked in the sentences: (name, title, higher
# is better).
PAIRED_METRICS = (
    ("val_accuracy", "validation accuracy", True),
    ("val_loss", "validation loss", False),
    ("test_roc_auc", "test ROC AUC", True),
)


@dataclass(frozen=True)
class Group:
    """The complete cells of one learning rate (and any other non-seed axes) over seeds.

    ``per_seed`` maps a metric (``val_accuracy``, ``val_loss``, ``test_roc_auc``) to seed ->
    value, validation values of the epoch the study's objective uses (last or best); None where
    the cell is not complete. ``summaries`` holds ``val_accuracy``, ``val_loss`` and
    ``test_<metric>`` over the complete seeds; ``trials`` are the complete cells' trials, run
    with ``seeds``. ``diverged`` and ``collapsed`` (test predictions all one class) list seeds.
    """

    label: str
    params: dict[str, Any]
    trials: list[int]
    seeds: list[Any]
    per_seed: dict[str, dict[Any, float | None]]
    summaries: dict[str, Summary]
    diverged: list[Any]
    collapsed: list[Any]


@dataclass(frozen=True)
class StudyResults:
    """Everything an export holds.

    ``rankings`` maps a metric of ``PAIRED_METRICS`` to what its paired tests support;
    ``paired`` holds every paired test (over seeds, and with a review per seed on the test
    images). ``review`` and ``predictions`` are set when the prediction files were read;
    ``notes`` say what they lacked.
    """

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
    rankings: dict[str, Ranking | None]
    paired: list[PairedTest]
    review: Review | None = None
    predictions: dict[int, TrialPredictions] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> int:
        return self.cells - len(self.missing)

    def headline(self) -> str:
        """The plain sentence on the objective: which rate leads and what the tests support."""
        ranking = self.rankings.get("val_accuracy")
        if ranking is not None:
            return ranking.sentence
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
            "statistics": None if self.review is None else _statistics(self.review),
            "rankings": {
                name: None if r is None else r.to_dict() for name, r in self.rankings.items()
            },
            "paired": [test.to_dict() for test in self.paired],
            "notes": self.notes,
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
                    "collapsed_seeds": g.collapsed,
                }
                for g in self.groups
            ],
            "trials": self.trials,
        }


def collect(study: optuna.Study, review: Review | None = None) -> StudyResults:
    """Read ``study`` (made by ``create_grid_study``) into per-trial records and per-rate tables.

    Only the COMPLETE trial of each cell enters the tables; every trial, of any state, is a row.

    Args:
        study: The grid study.
        review: How to compute the statistics that need the prediction files (patient
            bootstrap, Brier, Youden, DeLong, McNemar). Defaults to `None`: none of them, so
            that ``status`` and the dashboard refresh stay quick.
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
    paired = _paired_over_seeds(groups)
    predictions: dict[int, TrialPredictions] = {}
    notes: list[str] = []
    if review is not None:
        predictions, per_seed, notes = _reviewed(study, review, spec, records, groups)
        paired += per_seed
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
        rankings=_rankings(groups, paired),
        paired=paired,
        review=review,
        predictions=predictions,
        notes=notes,
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
        "test_brier": test.get("brier"),
        "collapsed": _collapsed(record.test),
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
    columns = {"val_accuracy": "val_accuracy" + suffix, "val_loss": "val_loss" + suffix}
    columns["test_roc_auc"] = "test_roc_auc"
    per_seed: dict[str, dict[Any, float | None]] = {metric: {} for metric in columns}
    for seed, record in cells:
        for metric, column in columns.items():
            per_seed[metric][seed] = None if record is None else record[column]
    complete = [(seed, record) for seed, record in cells if record is not None]
    diverged = [bool(record["diverged"]) for _, record in complete]
    summaries = {
        metric: _summary([record[columns[metric]] for _, record in complete], diverged)
        for metric in ("val_accuracy", "val_loss")
    }
    for name in TEST_METRICS:
        summaries[f"test_{name}"] = _summary(
            [record[f"test_{name}"] for _, record in complete], diverged
        )
    return Group(
        label=", ".join(
            f"{axis.replace('_', ' ')} {format_value(v)}" for axis, v in params.items()
        ),
        params=params,
        trials=[record["trial"] for _, record in complete],
        seeds=[seed for seed, _ in complete],
        per_seed=per_seed,
        summaries=summaries,
        diverged=[seed for seed, record in complete if record["diverged"]],
        collapsed=[seed for seed, record in complete if record["collapsed"]],
    )


def _summary(values: list[Any], diverged: list[bool]) -> Summary:
    from study.results._stats import summarize  # SciPy takes a second: `lrstudy status` needs none

    return summarize([v if isinstance(v, (int, float)) else None for v in values], diverged)


def _collapsed(test: dict[str, Any] | None) -> bool | None:
    """Whether the tested network predicted one class for every test image; None untested."""
    if not test:
        return None
    if "collapsed" in test:
        return bool(test["collapsed"])
    # Recorded before the trainer said so: read it from the confusion counts.
    return test["tp"] + test["fp"] == 0 or test["tn"] + test["fn"] == 0


def _paired_over_seeds(groups: list[Group]) -> list[PairedTest]:
    from study.results._stats import paired_over_seeds

    return [
        test
        for metric, _, _ in PAIRED_METRICS
        for test in paired_over_seeds({g.label: g.per_seed[metric] for g in groups}, metric)
    ]


def _rankings(groups: list[Group], paired: list[PairedTest]) -> dict[str, Ranking | None]:
    from study.results._stats import PAIRED_T, rank

    return {
        metric: rank(
            {group.label: group.summaries[metric] for group in groups},
            [t for t in paired if t.metric == metric and t.test == PAIRED_T],
            title,
            higher_is_better=higher,
        )
        for metric, title, higher in PAIRED_METRICS
    }


def _reviewed(
    study: optuna.Study,
    review: Review,
    spec: Any,
    records: dict[int, dict[str, Any]],
    groups: list[Group],
) -> tuple[dict[int, TrialPredictions], list[PairedTest], list[str]]:
    """Read the complete trials' predictions; add each one's statistics to its test record.

    Returns the predictions, the per-seed tests on the test images, and notes on what lacked.
    """
    from study.results._predictions import VAL_PREDICTIONS_FILE, load_predictions
    from study.results._reviewer import patient_of, per_seed_tests, trial_statistics

    complete = [records[number] for group in groups for number in group.trials]
    predictions, notes = load_predictions(study, complete, review.artifacts)
    patient = patient_of(spec)
    for record in complete:
        loaded = predictions[record["trial"]]
        if loaded.test is not None:
            added = trial_statistics(loaded.test, loaded.val, patient, review)
            record["test"] = {**(record["test"] or {}), **added}
            record["test_brier"] = added["brier"]
    tested = [loaded for loaded in predictions.values() if loaded.test is not None]
    without = sum(loaded.val is None for loaded in tested)
    if without:
        notes.append(
            f"Youden's threshold is not reported for {without} of {len(tested)} trials: no "
            f"{VAL_PREDICTIONS_FILE} (each validation image's prediction, beside "
            "predictions.csv) was found for them; their metrics use the threshold 0.5 only"
        )
    trials = [(group.label, dict(zip(group.seeds, group.trials, strict=True))) for group in groups]
    return predictions, per_seed_tests(trials, predictions), notes


def _statistics(review: Review) -> dict[str, Any]:
    """How the per-image statistics were computed, so that a reader can reproduce them."""
    from study.results._bootstrap import CONFIDENCE, THRESHOLD
    from study.results._paired import ALPHA, POWER

    return {
        "bootstrap": "patients",
        "resamples": review.resamples,
        "seed": review.seed,
        "confidence": CONFIDENCE,
        "threshold": THRESHOLD,
        "alpha": ALPHA,
        "power": POWER,
        "holm": "within each metric, test and seed",
    }


def _ordered_axes(axes: list[str]) -> list[str]:
    first = [axis for axis in ("learning_rate", "seed") if axis in axes]
    return first + [axis for axis in axes if axis not in first]


def format_value(value: Any) -> str:
    """A grid value as tables show it: floats in %g (0.0001, not 1e-04 or 0.00010000)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()
