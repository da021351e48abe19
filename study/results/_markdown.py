"""A study's results as Markdown: the paper's Tables 4, 5 and 6, the reviewer's statistics, and
a row per trial.

Numbers carry four decimals, as the paper's tables do; an undefined SD or interval reads
"n/a" and a missing value "-" or "missing", never 0 or NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from study.results._collect import PAIRED_METRICS, Group, StudyResults, format_value
from study.results._reviewer import DELONG, INTERVAL_METRICS, MCNEMAR
from study.results._stats import PAIRED_T, PairedTest, Summary
from trainer import TEST_METRICS
from trainer._config import KEYS_ADDED_LATER

_TEST_TITLES = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "specificity": "specificity",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "brier": "Brier",
}


def to_markdown(
    results: StudyResults, figures: Sequence[Path] = (), notes: Sequence[str] = ()
) -> str:
    """The paper's Tables 4, 5 and 6 with CIs, the headline sentence, the reviewer's statistics
    (with a review), and every trial.

    ``figures`` (PNG files beside the Markdown file) are linked, and ``notes`` say what the
    figures had to leave out.
    """
    lines = [
        f"# Study `{results.study}`: learning rates compared",
        "",
        f"{results.complete} of {results.cells} cells complete. {how_to_read(results)}",
        "",
        *protocol_lines(results.spec),
        "",
    ]
    if results.missing:
        lines += ["**Missing cells** (not in the tables):", ""]
        lines += [f"- `{m['cell']}`: {_missing_reason(m)}" for m in results.missing]
        lines.append("")
    lines += [f"**Result.** {results.headline()}", ""]
    lines += markdown_tables(results)
    lines += paired_tables(results)
    if results.review is not None:
        lines += _interval_table(results) + _youden_table(results)
    if figures or notes or results.notes:
        lines += ["## Figures and notes", ""]
        lines += [f"![{path.stem.replace('_', ' ')}]({path.name})" for path in figures]
        lines += ["", *(f"- {note}" for note in [*results.notes, *notes]), ""]
    lines += ["## Trials", "", *_trial_table(results)]
    return "\n".join(lines) + "\n"


def how_to_read(results: StudyResults) -> str:
    """What a table's numbers are: which epoch's, which SD, which interval."""
    reduce = "last epoch" if results.reduce == "last" else "best epoch"
    return (
        f"Values per seed are the {reduce}'s; SD is the sample SD (n - 1); 95% CI by "
        "Student's t over seeds."
    )


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
        lines += _beyond_range(results, metric)
        ranking = results.rankings.get(metric)
        if ranking is not None and metric != "val_accuracy":
            lines += ["", ranking.sentence]
        lines.append("")
        if metric == "val_accuracy" and any(g.diverged for g in results.groups):
            lines += [  # under the first table that marks it
                "† diverged (a real outcome of that learning rate): its accuracy counts in "
                "every mean; a loss it does not have is left out, and the n column says so.",
                "",
            ]
    header = [*_group_header(results), *(_TEST_TITLES[name] for name in TEST_METRICS)]
    rows = [
        [
            *_group_cells(group, results),
            *(_mean_sd(group.summaries[f"test_{name}"]) for name in TEST_METRICS),
            f"{len(group.collapsed)} of {len(group.trials)}",
            str(len(group.trials)),
        ]
        for group in results.groups
    ]
    lines += ["## Test metrics, mean ± SD over seeds (Table 6)", ""]
    lines += _table([*header, "collapsed", "n"], rows)
    lines += [
        "",
        "Threshold 0.5. Collapsed: seeds whose network predicted one class for every test image "
        "(counted in every mean: its accuracy is that class's share). A ratio with nothing to "
        "divide by (the precision of a seed that predicted no PNEUMONIA, and then its F1) "
        "counts as 0, as scikit-learn's zero_division=0 does.",
    ]
    ranking = results.rankings.get("test_roc_auc")
    if ranking is not None:
        lines += ["", ranking.sentence]
    lines.append("")
    return lines


def paired_tables(results: StudyResults) -> list[str]:
    """Every paired test: over seeds per metric, and per seed on the shared test images."""
    over_seeds = [t for t in results.paired if t.test == PAIRED_T]
    if not over_seeds:
        return []
    lines = [
        "## Paired comparisons",
        "",
        "Every pair of groups; a - b is the first group minus the second. p_holm is Holm's "
        "correction within each metric (and seed): a gap is significant when p_holm < 0.05. "
        "Seeds needed: the seeds a paired t-test needs to detect the observed mean gap at 80% "
        "power, given the observed SD of the paired differences, at alpha 0.05 over the number "
        "of pairs with a p-value (Holm's strictest step).",
        "",
        "### Over seeds (paired t-test, seed as the pair)",
        "",
    ]
    rows = [
        [
            _metric_title(t.metric), t.a, t.b, str(t.n), _number(t.difference),
            _number(t.details["sd_difference"]), _number(t.statistic), _p(t.p), _p(t.p_holm),
            _seeds_needed(t),
        ]
        for t in over_seeds
    ]  # fmt: skip
    header = ["metric", "a", "b", "seeds", "mean a - b", "SD of a - b", "t", "p", "p_holm",
              "seeds needed"]  # fmt: skip
    lines += _table(header, rows)
    delong = [t for t in results.paired if t.test == DELONG]
    if delong:
        lines += ["", "### Per seed: DeLong's test of the test ROC AUCs, on the same images", ""]
        rows = [
            [
                str(t.seed), t.a, t.b, str(t.n), _number(t.details.get("auc_a")),
                _number(t.details.get("auc_b")), _number(t.statistic), _p(t.p), _p(t.p_holm),
                t.note or "",
            ]
            for t in delong
        ]  # fmt: skip
        header = ["seed", "a", "b", "images", "AUC a", "AUC b", "z", "p", "p_holm", "note"]
        lines += _table(header, rows)
    mcnemar = [t for t in results.paired if t.test == MCNEMAR]
    if mcnemar:
        lines += [
            "",
            "### Per seed: McNemar's exact test of right and wrong answers at threshold 0.5",
            "",
        ]
        rows = [
            [
                str(t.seed), t.a, t.b, str(t.n), _number(t.difference),
                _plain(t.details.get("only_a_right")), _plain(t.details.get("only_b_right")),
                _p(t.p), _p(t.p_holm), t.note or "",
            ]
            for t in mcnemar
        ]  # fmt: skip
        header = ["seed", "a", "b", "images", "accuracy a - b", "only a right",
                  "only b right", "p", "p_holm", "note"]  # fmt: skip
        lines += _table(header, rows)
    per_seed = [t for t in delong + mcnemar if t.p_holm is not None]
    if per_seed:
        significant = {
            name: sum(t.p_holm is not None and t.p_holm < 0.05 for t in per_seed if t.test == name)
            for name in (DELONG, MCNEMAR)
        }
        counts = {name: sum(t.test == name for t in per_seed) for name in (DELONG, MCNEMAR)}
        lines += [
            "",
            f"After Holm's correction within each seed, DeLong finds {significant[DELONG]} of "
            f"{counts[DELONG]} testable AUC differences (pairs, over all seeds) significant, and "
            f"McNemar {significant[MCNEMAR]} of {counts[MCNEMAR]} accuracy differences. These "
            "per-seed tests say whether two trained networks differ on these test images; the "
            "tests over seeds say whether the learning rates differ beyond the seed-to-seed "
            "spread.",
        ]
    lines.append("")
    return lines


def _interval_table(results: StudyResults) -> list[str]:
    """Each complete trial's test metrics with their 95% patient-bootstrap intervals."""
    assert results.review is not None  # only called with a review
    records = {record["trial"]: record for record in results.trials}
    rows = []
    for group in results.groups:
        for number, seed in zip(group.trials, group.seeds, strict=True):
            test = records[number]["test"] or {}
            ci95 = test.get("ci95")
            if ci95 is None:
                continue
            values = {**{name: test.get(name) for name in TEST_METRICS}, "brier": test["brier"]}
            rows.append(
                [
                    *_group_cells(group, results), str(seed), str(number),
                    *(_with_interval(values[name], ci95[name]) for name in INTERVAL_METRICS),
                    str(test["patients"]), "yes" if records[number]["collapsed"] else "no",
                ]
            )  # fmt: skip
    if not rows:
        return []
    titles = [_TEST_TITLES[name] for name in INTERVAL_METRICS]
    header = [*_group_header(results), "seed", "trial", *titles, "patients", "collapsed"]
    return [
        "## Test metrics per trial, with 95% intervals by bootstrap over patients",
        "",
        f"Threshold 0.5. Each interval is the 2.5th to 97.5th percentile of the metric over "
        f"{results.review.resamples} resamples of the test patients (seed {results.review.seed}), "
        "each drawn patient bringing all of their images. Brier: mean squared difference of "
        "probability and label (0 perfect, 0.25 a constant 0.5).",
        "",
        *_table(header, rows),
        "",
    ]


def _youden_table(results: StudyResults) -> list[str]:
    """Sensitivity and specificity at the threshold Youden's J picks on validation."""
    records = {record["trial"]: record for record in results.trials}
    rows = []
    for group in results.groups:
        for number, seed in zip(group.trials, group.seeds, strict=True):
            chosen = (records[number]["test"] or {}).get("youden")
            if chosen is None:
                continue
            rows.append(
                [
                    *_group_cells(group, results), str(seed), str(number),
                    _number(chosen["threshold"]), _number(chosen["validation_j"]),
                    _number(chosen["sensitivity"]), _number(chosen["specificity"]),
                ]
            )  # fmt: skip
    if not rows:
        return []
    header = [*_group_header(results), "seed", "trial", "threshold", "validation J",
              "test sensitivity", "test specificity"]  # fmt: skip
    return [
        "## Secondary: sensitivity and specificity at the threshold chosen on validation",
        "",
        "Not the primary result (that is threshold 0.5 throughout). Youden's J = sensitivity + "
        "specificity - 1 is maximised on the validation images; the threshold is then applied, "
        "unchanged, to the test images.",
        "",
        *_table(header, rows),
        "",
    ]


def _trial_table(results: StudyResults) -> list[str]:
    extra = [axis for axis in results.axes if axis not in ("learning_rate", "seed")]
    header = [
        "trial", "learning rate", "seed", *extra, "state", "val acc (last)", "val loss (last)",
        "val acc (best)", "val loss (best)", "best epoch", "test acc", "precision", "recall",
        "specificity", "F1", "ROC AUC", "epochs", "diverged", "collapsed", "duration s",
        "worker", "host",
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
                {True: "yes", False: "no", None: "-"}[r["collapsed"]],
                "-" if r["duration_s"] is None else f"{r['duration_s']:.1f}",
                _plain(r["worker_id"]),
                _plain(r["host"]),
            ]
        )
    return _table(header, rows)


# Where each table's values can lie, for the note on intervals that run past it.
_RANGES = {
    "val_accuracy": (0.0, 1.0, "outside [0, 1], where accuracies lie"),
    "val_loss": (0.0, math.inf, "below 0, where no loss lies"),
}


def _beyond_range(results: StudyResults, metric: str) -> list[str]:
    """A note where a Student-t interval runs past the metric's range, as few seeds allow."""
    low, high, where = _RANGES[metric]
    beyond = [
        group.label
        for group in results.groups
        if (s := group.summaries[metric]).ci_low is not None
        and (s.ci_low < low or (s.ci_high is not None and s.ci_high > high))
    ]
    if not beyond:
        return []
    return [
        "",
        f"The 95% CI of {', '.join(beyond)} runs {where}: a Student-t interval over so few "
        "seeds can; it is printed as computed.",
    ]


def protocol_lines(spec: dict[str, Any] | None) -> list[str]:
    """What was trained, and how: the reading of the paper's open choices a reader needs."""
    if spec is None:
        return ["Protocol: not recorded (the study was not made from an lrstudy spec)."]
    # A study stored before some keys existed trained what their defaults say.
    train = {**KEYS_ADDED_LATER["train"], **spec["train"]}
    data, study = spec["data"], spec["study"]
    grid = "; ".join(f"{axis} {values}" for axis, values in spec["grid"].items())
    if train["weights"] == "none":
        start = "no pretrained weights, all layers trained"
    else:
        tuned = "base frozen, head trained" if train["freeze_base"] else "fine-tuned"
        start = f"{train['weights']} weights, {tuned}"
    return [
        f"**Protocol:** {train['model']} ({start}), "
        f"{train['image_size']} px, {train['epochs']} epochs, batch {train['batch_size']}, "
        f"{train['optimizer']}, Keras on {train['backend']}; data split `{data['split']}` "
        f"(split seed {data['split_seed']}); objective `{study['objective']}` of the "
        f"{study['reduce']} epoch; test weights: {train['test_weights']}.",
        "",
        f"**Grid:** {grid}.",
    ]


def _group_header(results: StudyResults) -> list[str]:
    return [axis.replace("_", " ") for axis in results.axes if axis != "seed"]


def _group_cells(group: Group, results: StudyResults) -> list[str]:
    return [format_value(group.params[axis]) for axis in results.axes if axis != "seed"]


def _summary_cells(s: Summary) -> list[str]:
    ci = "n/a" if s.ci_low is None else f"[{s.ci_low:.4f}, {s.ci_high:.4f}]"
    left_out = s.left_out()
    n = str(s.n) + (f" ({left_out})" if left_out else "")
    return [_number(s.mean), "n/a" if s.sd is None else f"{s.sd:.4f}", ci, n]


def _mean_sd(s: Summary) -> str:
    if s.mean is None:
        return "-"
    text = f"{s.mean:.4f} ± {s.sd:.4f}" if s.sd is not None else f"{s.mean:.4f} (one seed)"
    left_out = s.left_out()
    return text + (f" (n = {s.n}: {left_out})" if left_out else "")


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "-"
    ci = "n/a" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]"
    return f"{value:.4f} {ci}"


def _metric_title(metric: str) -> str:
    return next(title for name, title, _ in PAIRED_METRICS if name == metric)


def _seeds_needed(test: PairedTest) -> str:
    if test.details["seeds_needed_beyond_cap"]:
        return "beyond any feasible study"
    return _plain(test.details["seeds_needed"])


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


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
