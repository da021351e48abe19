"""What ``status`` and ``run`` print: the grid cell by cell, and summaries over seeds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from study.grid import CellState, _attrs, cell_states, failed_for_good, read_trial, study_folder
from study.results._collect import collect, format_value

if TYPE_CHECKING:
    import optuna


def progress_line(study: optuna.Study) -> str:
    """The grid in one line: "5/12 complete, 2 running, 5 waiting, 0 failed"."""
    return _counts(cell_states(study))


def _counts(states: list[CellState]) -> str:
    counts = {name: 0 for name in ("complete", "running", "waiting", "failed")}
    for state in states:
        counts[state.state] = counts.get(state.state, 0) + 1
    return f"{counts['complete']}/{len(states)} complete, " + ", ".join(
        f"{count} {name}" for name, count in counts.items() if name != "complete"
    )


def status_table(study: optuna.Study) -> str:
    """One row per cell: its axes, state, trial and what is known of it."""
    states = cell_states(study)
    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    axes = list(states[0].params) if states else []
    rows = [[*axes, "state", "trial", "detail"]]
    for state in states:
        trial = trials.get(state.trial_number) if state.trial_number is not None else None
        rows.append(
            [
                *(format_value(state.params[axis]) for axis in axes),
                state.state,
                "-" if state.trial_number is None else str(state.trial_number),
                _detail(state, trial, _metric(study)),
            ]
        )
    header = f"study {study.study_name}: {_counts(states)}"
    return header + "\n" + _table(rows)


def _detail(state: CellState, trial: optuna.trial.FrozenTrial | None, metric: str) -> str:
    record = read_trial(trial) if trial is not None else None
    if state.state == "running":
        epochs = record.epochs if record is not None and record.epochs is not None else "?"
        return (
            f"worker {state.worker_id or '?'} on {state.host or '?'}, "
            f"epoch {state.step or 0} of {epochs}"
        )
    if state.state == "complete":
        text = "-" if state.value is None else f"{metric} {state.value:.4f}"
        return text + (", diverged" if record is not None and record.diverged else "")
    if state.state == "failed":
        where = record.traceback_file if record is not None else None
        text = f"retries {state.retries}: {state.error or 'unknown error'}"
        return text + (f" (traceback: {where})" if where else "")
    return f"retry {state.retries}" if state.retries else ""


def study_line(study: optuna.Study) -> str:
    """The study's id and the folder of its files (as its creator's spec placed it)."""
    uid = _attrs.study_uid(study)
    spec = study.user_attrs.get(_attrs.SPEC)
    root = spec.get("study", {}).get("artifacts") if isinstance(spec, dict) else None
    where = f", files in {study_folder(root, study.study_name, uid)}" if root else ""
    return f"study id {uid or 'none (made before studies had one)'}{where}"


def failure_lines(study: optuna.Study, *, shown: int = 4) -> list[str]:
    """One line per reason of the cells failed for good: how many, why, and which cells."""
    by_reason: dict[str, list[str]] = {}
    for state in failed_for_good(study):
        by_reason.setdefault(_first_line(state.error), []).append(state.key)
    lines = []
    for reason, keys in by_reason.items():
        more = f", and {len(keys) - shown} more" if len(keys) > shown else ""
        cells = "cell" if len(keys) == 1 else "cells"
        lines.append(
            f"{len(keys)} {cells} failed for good: {reason} ({', '.join(keys[:shown])}{more})"
        )
    return lines


def _first_line(error: str | None, limit: int = 200) -> str:
    lines = (error or "").strip().splitlines()
    line = lines[0] if lines else "unknown error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def summary_table(study: optuna.Study) -> str:
    """Mean and sample SD of the objective over seeds, per learning rate (and other axes)."""
    results = collect(study)
    axes = [axis for axis in results.axes if axis != "seed"]
    rows = [[*axes, "complete", "mean", "sd", "diverged"]]
    for group in results.groups:
        summary = group.summaries[results.metric]
        rows.append(
            [
                *(format_value(group.params[axis]) for axis in axes),
                f"{len(group.trials)}/{len(group.per_seed[results.metric])}",
                "-" if summary.mean is None else f"{summary.mean:.4f}",
                "-" if summary.sd is None else f"{summary.sd:.4f}",
                str(len(group.diverged)),
            ]
        )
    return f"{results.metric} over seeds (sample SD):\n" + _table(rows)


def _metric(study: optuna.Study) -> str:
    return study.metric_names[0] if study.metric_names else "objective"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
