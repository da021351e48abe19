"""The export's PNG figures: the paper's Fig. 2 (per-epoch curves) and ROC curves per rate.

Matplotlib runs on the Agg backend, so figures are drawn on machines without a display.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.results._stats import per_epoch

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from study.results._collect import Group, StudyResults

EPOCH_FIGURES = {
    "val_accuracy": ("val_accuracy.png", "Validation accuracy"),
    "val_loss": ("val_loss.png", "Validation loss"),
}
ROC_FIGURE = "roc.png"
_DPI = 120


def write_figures(results: StudyResults, out: Path) -> tuple[list[Path], list[str]]:
    """Draw every figure into ``out``; returns the files and what each had to leave out."""
    import matplotlib

    matplotlib.use("Agg")
    written: list[Path] = []
    notes: list[str] = []
    records = {record["trial"]: record for record in results.trials}
    for metric, (name, title) in EPOCH_FIGURES.items():
        if _epoch_figure(results, records, metric, title, out / name):
            written.append(out / name)
        else:
            notes.append(f"{name} not drawn: no complete trial has a {metric} history yet")
    roc_notes, drawn = _roc_figure(results, records, out / ROC_FIGURE)
    notes += roc_notes
    if drawn:
        written.append(out / ROC_FIGURE)
    return written, notes


def epoch_series(group: Group, records: dict[int, dict[str, Any]], metric: str) -> list[list[Any]]:
    """Each complete seed's per-epoch values of ``metric`` (empty lists where unrecorded)."""
    return [list((records[t].get("history") or {}).get(metric) or []) for t in group.trials]


def _epoch_figure(
    results: StudyResults, records: dict[int, dict[str, Any]], metric: str, title: str, path: Path
) -> bool:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for group in results.groups:
        summaries = per_epoch(epoch_series(group, records, metric))
        points = [(i + 1, s, s.mean) for i, s in enumerate(summaries) if s.mean is not None]
        if not points:
            continue
        drawn = True
        epochs = [epoch for epoch, _, _ in points]
        means = [mean for _, _, mean in points]
        (line,) = axes.plot(epochs, means, marker="o", markersize=3, label=group.label)
        band = [(e, mean - s.sd, mean + s.sd) for e, s, mean in points if s.sd is not None]
        if band:
            axes.fill_between(
                [b[0] for b in band],
                [b[1] for b in band],
                [b[2] for b in band],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    if drawn:
        from matplotlib.ticker import MaxNLocator

        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set(
            xlabel="epoch", ylabel=title.lower(), title=f"{title} per epoch (mean ± 1 SD, seeds)"
        )
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=_DPI)
    plt.close(figure)
    return drawn


def _roc_figure(
    results: StudyResults, records: dict[int, dict[str, Any]], path: Path
) -> tuple[list[str], bool]:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    notes: list[str] = []
    groups = [group for group in results.groups if group.trials]
    if not groups:
        return [f"{ROC_FIGURE} not drawn: no complete trial yet"], False
    figure, panels = plt.subplots(
        1, len(groups), figsize=(3.6 * len(groups), 3.8), squeeze=False, sharey=True
    )
    drawn = False
    for group, axes in zip(groups, panels[0], strict=True):
        for number in group.trials:
            record = records[number]
            loaded = _predictions(record, notes)
            if loaded is None:
                continue
            labels, scores = loaded
            fpr, tpr, _ = roc_curve(labels, scores)
            auc = roc_auc_score(labels, scores)
            axes.plot(fpr, tpr, label=f"seed {record['seed']} (AUC {auc:.3f})")
            drawn = True
        _roc_axes(axes, group.label)
    if drawn:
        figure.suptitle("Test ROC curves per learning rate")
        figure.tight_layout()
        figure.savefig(path, dpi=_DPI)
    else:
        notes.append(f"{ROC_FIGURE} not drawn: no trial has usable predictions")
    plt.close(figure)
    return notes, drawn


def _predictions(record: dict[str, Any], notes: list[str]) -> tuple[list[int], list[float]] | None:
    """Labels and probabilities of a trial's predictions CSV, or None with a note saying why."""
    where = f"trial {record['trial']} ({record['cell']})"
    path = record.get("predictions_path")
    if not path:
        notes.append(f"{where}: no predictions file recorded; left out of the ROC curves")
        return None
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        labels = [int(row["label"]) for row in rows]
        scores = [float(row["probability"]) for row in rows]
    except FileNotFoundError:
        notes.append(f"{where}: predictions file {path} not found; left out of the ROC curves")
        return None
    except (KeyError, ValueError, TypeError) as error:
        notes.append(f"{where}: predictions file {path} is not path,label,probability ({error})")
        return None
    if not all(math.isfinite(p) for p in scores):
        notes.append(f"{where}: predictions hold NaN (diverged); no ROC curve")
        return None
    if len(set(labels)) < 2:
        notes.append(f"{where}: predictions hold one class only; no ROC curve")
        return None
    return labels, scores


def _roc_axes(axes: Axes, title: str) -> None:
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    spec = axes.get_subplotspec()
    assert spec is not None  # every panel comes from plt.subplots
    if spec.is_first_col():
        axes.set_ylabel("true positive rate")
    axes.grid(alpha=0.3)
    if axes.lines[1:]:
        axes.legend(fontsize=7, loc="lower right")
