"""The export's PNG figures: the paper's Fig. 2 (per-epoch curves), and per rate the test ROC
curves and the reliability diagram.

Matplotlib runs on the Agg backend, so figures are drawn on machines without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from study.results._calibration import brier_score, reliability_bins
from study.results._stats import fewer_seeds_from, per_epoch
from trainer._metrics import rank_keys

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from study.results._collect import Group, StudyResults
    from study.results._predictions import Predictions

EPOCH_FIGURES = {
    "val_accuracy": ("val_accuracy.png", "Validation accuracy"),
    "val_loss": ("val_loss.png", "Validation loss"),
}
ROC_FIGURE = "roc.png"
RELIABILITY_FIGURE = "reliability.png"
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
    if results.review is None:
        notes.append(
            f"{ROC_FIGURE} and {RELIABILITY_FIGURE} not drawn: the prediction files were not read"
        )
        return written, notes
    for name, draw in ((ROC_FIGURE, _roc_figure), (RELIABILITY_FIGURE, _reliability_figure)):
        figure_notes, drawn = draw(results, out / name)
        notes += figure_notes
        if drawn:
            written.append(out / name)
    return written, notes


def epoch_series(group: Group, records: dict[int, dict[str, Any]], metric: str) -> list[list[Any]]:
    """Each complete seed's per-epoch values of ``metric`` (empty lists where unrecorded).

    A diverged seed stopped training with non-finite weights, which go on predicting what they
    predicted then: its last value holds to the group's last epoch. So every epoch's mean
    counts every seed (but a NaN loss, which Table 5 leaves out too), and the curves end where
    Tables 4 and 5 stand.
    """
    series = [list((records[t].get("history") or {}).get(metric) or []) for t in group.trials]
    epochs = max(map(len, series), default=0)
    for values, trial in zip(series, group.trials, strict=True):
        if records[trial].get("diverged") and values:
            values += values[-1:] * (epochs - len(values))
    return series


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
        label = group.label + fewer_seeds_from(summaries)
        (line,) = axes.plot(epochs, means, marker="o", markersize=3, label=label)
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


def _roc_figure(results: StudyResults, path: Path) -> tuple[list[str], bool]:
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
    records = {record["trial"]: record for record in results.trials}
    for group, axes in zip(groups, panels[0], strict=True):
        for number, seed in zip(group.trials, group.seeds, strict=True):
            test = _test_predictions(results, number)
            if test is None:
                continue  # the loader has said why
            where = f"trial {number} ({records[number]['cell']})"
            if len(set(test.labels.tolist())) < 2:
                notes.append(f"{where}: the test labels hold one class only; no ROC curve")
                continue
            # Ranks as Table 6's AUC ranks: the same curve, finite where a logit overflowed,
            # and NaN (a diverged network) lowest, so a diverged seed draws its real curve.
            ranks = rank_keys(test.scores)
            fpr, tpr, _ = roc_curve(test.labels, ranks)
            auc = roc_auc_score(test.labels, ranks)
            diverged = ", diverged" if np.isnan(test.scores).any() else ""
            axes.plot(
                fpr,
                tpr,
                color=f"C{results.seeds.index(seed) % 10}",  # one colour per seed in every panel
                label=f"seed {seed} (AUC {auc:.3f}{diverged})",
            )
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


def _reliability_figure(results: StudyResults, path: Path) -> tuple[list[str], bool]:
    """Observed PNEUMONIA share against mean predicted probability, test images of all seeds."""
    import matplotlib.pyplot as plt

    pooled = []
    for group in results.groups:
        parts = [_test_predictions(results, number) for number in group.trials]
        kept = [part for part in parts if part is not None]
        if kept:
            labels = np.concatenate([part.labels for part in kept])
            probabilities = np.concatenate([part.probabilities for part in kept])
            pooled.append((group, len(kept), labels, probabilities))
    if not pooled:
        return [f"{RELIABILITY_FIGURE} not drawn: no trial has usable predictions"], False
    figure, panels = plt.subplots(
        1, len(pooled), figsize=(3.6 * len(pooled), 3.8), squeeze=False, sharey=True
    )
    for (group, seeds, labels, probabilities), axes in zip(pooled, panels[0], strict=True):
        filled = [b for b in reliability_bins(labels, probabilities) if b.count]
        axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        axes.plot(
            [b.mean_predicted for b in filled],
            [b.observed_frequency for b in filled],
            marker="o",
            markersize=4,
        )
        counts = axes.twinx()
        counts.bar(
            [(b.low + b.high) / 2 for b in filled],
            [b.count for b in filled],
            width=0.09,
            color="grey",
            alpha=0.25,
        )
        counts.set_yticks([])
        axes.set_zorder(counts.get_zorder() + 1)  # the curve over the bars
        axes.patch.set_visible(False)
        brier = brier_score(labels, probabilities)
        axes.set(
            xlabel="mean predicted probability",
            title=f"{group.label}\nBrier {brier:.3f} ({seeds} seed{'s' * (seeds != 1)} pooled)",
            xlim=(0, 1),
            ylim=(0, 1.01),
        )
        axes.title.set_fontsize(9)
        spec = axes.get_subplotspec()
        assert spec is not None  # every panel comes from plt.subplots
        if spec.is_first_col():
            axes.set_ylabel("observed share of PNEUMONIA")
        axes.grid(alpha=0.3)
    figure.suptitle("Test reliability per learning rate (bars: images per bin; NaN counts as 0)")
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)
    return [], True


def _test_predictions(results: StudyResults, trial: int) -> Predictions | None:
    loaded = results.predictions.get(trial)
    return None if loaded is None else loaded.test


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
