"""The export of a study: Markdown, CSV and JSON, and the folder with figures beside them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from study.results._collect import StudyResults
from study.results._figures import write_figures
from study.results._markdown import to_markdown
from trainer import TEST_METRICS, InputError, json_safe

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
    "test_brier",
    "epochs_run",
    "diverged",
    "collapsed",
    "duration_s",
    "worker_id",
    "host",
    "error",
)


def render(results: StudyResults, fmt: str) -> str:
    """The export in ``fmt`` (one of ``FORMATS``)."""
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

    The ROC and reliability figures need ``results`` collected with a ``Review`` (which reads
    the prediction files). Returns the written files and notes on what a figure had to leave
    out (e.g. a trial whose predictions are NaN).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"--out {str(out)!r} cannot be made a folder ({error.strerror}); "
            "pass a folder path you can write to"
        ) from error
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
        ) from error
    return written + figures, notes


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value
