"""A study's results as Markdown: the paper's Tables 4, 5 and 6 and a row per trial.

Numbers carry four decimals, as the paper's tables do; an undefined SD or interval reads
"n/a" and a missing value "-" or "missing", never 0 or NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from study.results._collect import Group, StudyResults, format_value
from study.results._stats import Summary
from trainer import TEST_METRICS

_TEST_TITLES = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "specificity": "specificity",
    "f1": "F1",
    "roc_auc": "ROC AUC",
}


def to_markdown(
    results: StudyResults, figures: Sequence[Path] = (), notes: Sequence[str] = ()
) -> str:
    """The paper's Tables 4, 5 and 6 with CIs, the headline sentence, and every trial.

    ``figures`` (PNG files beside the Markdown file) are linked, and ``notes`` say what the
    figures had to leave out.
    """
    reduce = "last epoch" if results.reduce == "last" else "best epoch"
    lines = [
        f"# Study `{results.study}`: learning rates compared",
        "",
        f"{results.complete} of {results.cells} cells complete. Values per seed are the "
        f"{reduce}'s; SD is the sample SD (n - 1); 95% CI by Student's t over seeds.",
        "",
    ]
    if results.missing:
        lines += ["**Missing cells** (not in the tables):", ""]
        lines += [f"- `{m['cell']}`: {_missing_reason(m)}" for m in results.missing]
        lines.append("")
    lines += [f"**Result.** {results.headline()}", ""]
    lines += markdown_tables(results)
    if figures or notes:
        lines += ["## Figures", ""]
        lines += [f"![{path.stem.replace('_', ' ')}]({path.name})" for path in figures]
        lines += ["", *(f"- {note}" for note in notes), ""]
    lines += ["## Trials", "", *_trial_table(results)]
    return "\n".join(lines) + "\n"


def markdown_tables(results: StudyResults) -> list[str]:
    """Tables 4, 5 and 6 (validation accuracy, validation loss, test metrics) as Markdown."""
    lines: list[str] = []
    for metric, title in (
        ("val_accuracy", "Validation accuracy (Table 4)"),
        ("val_loss", "Validation loss (Table 5)"),
    ):
        header = [*_group_header(results), *(f"seed {s}" for s in results.seeds)]
        rows = []
        for group in results.groups:
            summary = group.summaries[metric]
            seeds = [
                _seed_cell(group.per_seed[metric].get(seed), seed in group.diverged)
                for seed in results.seeds
            ]
            rows.append([*_group_cells(group, results), *seeds, *_summary_cells(summary)])
        lines += [f"## {title}", ""]
        lines += _table([*header, "mean", "SD", "95% CI", "n"], rows)
        comparison = results.comparisons.get(metric)
        if comparison is not None and metric != "val_accuracy":
            lines += ["", comparison.sentence]
        lines.append("")
    if any(g.diverged for g in results.groups):
        lines += ["† diverged (a real outcome of that learning rate, kept in the statistics).", ""]
    header = [*_group_header(results), *(_TEST_TITLES[name] for name in TEST_METRICS), "n"]
    rows = [
        [
            *_group_cells(group, results),
            *(_mean_sd(group.summaries[f"test_{name}"]) for name in TEST_METRICS),
            str(len(group.trials)),
        ]
        for group in results.groups
    ]
    lines += ["## Test metrics, mean ± SD over seeds (Table 6)", ""]
    lines += _table(header, rows)
    comparison = results.comparisons.get("test_accuracy")
    if comparison is not None:
        lines += ["", comparison.sentence]
    lines.append("")
    return lines


def _trial_table(results: StudyResults) -> list[str]:
    extra = [axis for axis in results.axes if axis not in ("learning_rate", "seed")]
    header = [
        "trial", "learning rate", "seed", *extra, "state", "val acc (last)", "val loss (last)",
        "val acc (best)", "val loss (best)", "best epoch", "test acc", "precision", "recall",
        "specificity", "F1", "ROC AUC", "epochs", "diverged", "duration s", "worker", "host",
    ]  # fmt: skip
    numbers = ["val_accuracy_last", "val_loss_last", "val_accuracy_best", "val_loss_best"]
    rows = []
    for r in results.trials:
        rows.append(
            [
                str(r["trial"]),
                format_value(r["learning_rate"]),
                str(r["seed"]),
                *(format_value(r[axis]) for axis in extra),
                r["state"] + (f": {r['error']}" if r["error"] else ""),
                *(_number(r[name]) for name in numbers),
                _plain(r["best_epoch"]),
                *(_number(r[f"test_{name}"]) for name in TEST_METRICS),
                _plain(r["epochs_run"]),
                {True: "yes", False: "no", None: "-"}[r["diverged"]],
                "-" if r["duration_s"] is None else f"{r['duration_s']:.1f}",
                _plain(r["worker_id"]),
                _plain(r["host"]),
            ]
        )
    return _table(header, rows)


def _group_header(results: StudyResults) -> list[str]:
    return [axis.replace("_", " ") for axis in results.axes if axis != "seed"]


def _group_cells(group: Group, results: StudyResults) -> list[str]:
    return [format_value(group.params[axis]) for axis in results.axes if axis != "seed"]


def _summary_cells(s: Summary) -> list[str]:
    ci = "n/a" if s.ci_low is None else f"[{s.ci_low:.4f}, {s.ci_high:.4f}]"
    n = str(s.n) + (f" ({s.undefined} undefined)" if s.undefined else "")
    return [_number(s.mean), "n/a" if s.sd is None else f"{s.sd:.4f}", ci, n]


def _mean_sd(s: Summary) -> str:
    if s.mean is None:
        return "-"
    text = f"{s.mean:.4f} ± {s.sd:.4f}" if s.sd is not None else f"{s.mean:.4f} (one seed)"
    return text + (f" ({s.undefined} undefined)" if s.undefined else "")


def _seed_cell(value: float | None, diverged: bool) -> str:
    if value is None:
        return "missing" if not diverged else "undefined†"
    return f"{value:.4f}" + ("†" if diverged else "")


def _missing_reason(missing: dict[str, Any]) -> str:
    trial = "" if missing["trial"] is None else f" (trial {missing['trial']})"
    detail = f": {missing['error']}" if missing["error"] else ""
    return f"{missing['state']}{trial}{detail}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _plain(value: Any) -> str:
    return "-" if value is None else str(value)
