"""What optuna-dashboard shows on a study's page: the comparison figure and the study note.

optuna-dashboard reads everything from the storage: a Plotly figure and a Markdown note kept in
the study's system attributes. This module writes them from the study's results.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from storage import study_lock
from study.results._collect import Group, StudyResults, collect, format_value
from study.results._markdown import (
    how_to_read,
    markdown_tables,
    paired_tables,
    protocol_lines,
)
from study.results._stats import fewer_seeds_from, per_epoch

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

_logger = logging.getLogger(__name__)

FIGURE_ID = "learning-rate-comparison"
TEST_FIGURE_ID = "test-metrics"
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def refresh_views(study: optuna.Study) -> StudyResults:
    """Rewrite the study's figures and note from its trials as they are now.

    Safe from many workers at once: the study lock keeps two writers from interleaving the
    chunks that a figure or note is stored in. Other figures on the study (the learning-rate
    range test's) are kept: each figure has its own id.
    """
    from optuna_dashboard import save_note, save_plotly_graph_object

    results = collect(study)
    figures = {FIGURE_ID: comparison_figure(results), TEST_FIGURE_ID: test_figure(results)}
    note = study_note(results)
    with study_lock(study._storage, study.study_name):
        for figure_id, figure in figures.items():
            save_plotly_graph_object(study, figure, graph_object_id=figure_id)
        save_note(study, note)
    _logger.info(
        "study %r: dashboard figures and note refreshed (%d of %d cells complete)",
        study.study_name,
        results.complete,
        results.cells,
    )
    return results


def comparison_figure(results: StudyResults) -> go.Figure:
    """Validation accuracy and loss per epoch: each seed's curve, their mean and its 95% interval.

    Sized for optuna-dashboard's half-width card: a short title, the state of the grid and the
    reading key in a line below it, the legend under the plots. The band is the Student-t 95%
    interval of the mean over seeds; with 3 seeds it is wide (t = 4.3), so the axes follow the
    seeds' own values and the band may run off them rather than squash the curves.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from study.results._figures import epoch_series

    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("val accuracy", "val loss"), horizontal_spacing=0.12
    )
    records = {record["trial"]: record for record in results.trials}
    seen: dict[str, list[list[Any]]] = {"val_accuracy": [], "val_loss": []}
    thinned: list[str] = []  # means that leave out a diverged seed's NaN, from some epoch on
    for index, group in enumerate(results.groups):
        color = _PALETTE[index % len(_PALETTE)]
        for column, metric in enumerate(("val_accuracy", "val_loss"), start=1):
            series = epoch_series(group, records, metric)
            seen[metric] += series
            for seed_values in series:  # behind the mean: how far the seeds spread
                figure.add_trace(
                    go.Scatter(
                        x=list(range(1, len(seed_values) + 1)),
                        y=seed_values,
                        mode="lines",
                        line={"color": color, "width": 1},
                        opacity=0.35,
                        hoverinfo="skip",
                        legendgroup=group.label,
                        showlegend=False,
                    ),
                    row=1,
                    col=column,
                )
            summaries = per_epoch(series)
            if fewer := fewer_seeds_from(summaries):
                thinned.append(
                    f"{metric.removeprefix('val_')} of {_short_label(group.label)}{fewer}"
                )
            points = [
                (epoch, s, s.mean) for epoch, s in enumerate(summaries, 1) if s.mean is not None
            ]
            band = [(e, s.ci_low, s.ci_high) for e, s, _ in points if s.ci_low is not None]
            if band:
                figure.add_trace(
                    go.Scatter(
                        x=[b[0] for b in band] + [b[0] for b in reversed(band)],
                        y=[b[2] for b in band] + [b[1] for b in reversed(band)],
                        fill="toself",
                        mode="lines",
                        fillcolor=color,
                        opacity=0.08,
                        line={"width": 0},
                        hoverinfo="skip",
                        legendgroup=group.label,
                        showlegend=False,
                    ),
                    row=1,
                    col=column,
                )
            figure.add_trace(
                go.Scatter(
                    x=[e for e, _, _ in points],
                    y=[mean for _, _, mean in points],
                    customdata=[[s.n] for _, s, _ in points],
                    hovertemplate="epoch %{x}: mean %{y:.4f} over %{customdata[0]} seeds",
                    mode="lines+markers",
                    marker={"size": 4},
                    name=_short_label(group.label),
                    line={"color": color, "width": 2.5},
                    legendgroup=group.label,
                    showlegend=column == 1,
                ),
                row=1,
                col=column,
            )
    for column, (metric, series) in enumerate(seen.items(), start=1):
        figure.update_yaxes(range=_padded(series, metric), row=1, col=column)
    figure.update_xaxes(title_text="epoch")
    card_layout(
        figure,
        title="Learning rates: validation curves",
        key=f"{results.complete}/{results.cells} cells · line: mean · band: 95% t-interval "
        "over seeds · thin: each seed" + "".join(f" · {note}" for note in thinned),
    )
    return figure


def test_figure(results: StudyResults) -> go.Figure:
    """Test metrics per learning rate: a point per seed, the mean and its 95% interval."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = [("accuracy", "accuracy"), ("f1", "F1"), ("roc_auc", "ROC AUC")]
    figure = make_subplots(
        rows=1, cols=len(metrics), subplot_titles=[t for _, t in metrics], horizontal_spacing=0.08
    )
    records = {record["trial"]: record for record in results.trials}
    labels = [_axis_label(group) for group in results.groups]
    for column, (metric, _) in enumerate(metrics, start=1):
        for index, group in enumerate(results.groups):
            color = _PALETTE[index % len(_PALETTE)]
            values = [records[t].get(f"test_{metric}") for t in group.trials]
            seeds = [records[t]["seed"] for t in group.trials]
            figure.add_trace(
                go.Scatter(
                    x=[labels[index]] * len(values),
                    y=values,
                    customdata=seeds,
                    hovertemplate="seed %{customdata}: %{y:.4f}<extra></extra>",
                    mode="markers",
                    marker={"color": color, "size": 7, "opacity": 0.6},
                    showlegend=False,
                ),
                row=1,
                col=column,
            )
            summary = group.summaries[f"test_{metric}"]
            if summary.mean is None:
                continue
            error = None
            if summary.ci_low is not None and summary.ci_high is not None:
                # Drawn within [0, 1], where these metrics live; the key says so.
                high, low = min(summary.ci_high, 1.0), max(summary.ci_low, 0.0)
                error = {"type": "data", "symmetric": False, "array": [high - summary.mean],
                         "arrayminus": [summary.mean - low], "color": color}  # fmt: skip
            figure.add_trace(
                go.Scatter(
                    x=[labels[index]],
                    y=[summary.mean],
                    error_y=error,
                    hovertemplate=f"mean %{{y:.4f}}, n {summary.n}<extra></extra>",
                    mode="markers",
                    marker={"color": color, "size": 12, "symbol": "line-ew-open"},
                    showlegend=False,
                ),
                row=1,
                col=column,
            )
    figure.update_xaxes(type="category", title_text="learning rate")
    figure.update_yaxes(range=[0, 1.02])
    card_layout(
        figure,
        title="Learning rates: test metrics",
        key="dots: seeds · bar: mean, 95% t-interval over seeds (cut at 0 and 1) · threshold 0.5",
    )
    return figure


def card_layout(figure: go.Figure, *, title: str, key: str) -> None:
    """A short title, the key on the line below it and the legend under the plot: a figure
    legible in optuna-dashboard's half-width card."""
    figure.update_layout(
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}},
        margin={"t": 86, "l": 50, "r": 10, "b": 40},
        height=440,
        # Below the plots, so the panels keep the width of the dashboard's half-width card.
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
        annotations=[
            *figure.layout.annotations,
            {"text": key, "xref": "paper", "yref": "paper", "x": 0, "y": 1.13,
             "xanchor": "left", "showarrow": False, "font": {"size": 11, "color": "#555"}},
        ],
    )  # fmt: skip


def _padded(series: list[list[Any]], metric: str) -> list[float] | None:
    """An axis range around the seeds' values, so an interval wider than them cannot squash
    the curves; accuracy stays within [0, 1]."""
    values = [
        v for seed in series for v in seed if isinstance(v, (int, float)) and math.isfinite(v)
    ]
    if not values:
        return None
    low, high = min(values), max(values)
    pad = max(0.05 * (high - low), 0.01)
    low, high = low - pad, high + pad
    return [max(low, 0.0), min(high, 1.0)] if metric == "val_accuracy" else [max(low, 0.0), high]


def _axis_label(group: Group) -> str:
    """The learning rate alone when it is the only axis besides seed, else the short label."""
    if list(group.params) == ["learning_rate"]:
        return format_value(group.params["learning_rate"])
    return _short_label(group.label)


def _short_label(label: str) -> str:
    # "learning rate 0.001" -> "lr 0.001": legends and axes of a half-width card stay short.
    return label.replace("learning rate ", "lr ")


def study_note(results: StudyResults) -> str:
    """The study note: what to read first (the Result sentence and the key table), how to read
    optuna-dashboard's stock panels in a seeded grid, then the protocol, every table and the
    paired tests."""
    tables = markdown_tables(results)
    sections = [index for index, line in enumerate(tables) if line.startswith("## ")]
    key_end = sections[1] if len(sections) > 1 else len(tables)
    lines = [
        f"# {results.study}",
        "",
        f"**Result.** {results.headline()}",
        "",
        _progress(results),
        "",
        *tables[:key_end],
        how_to_read(results),
        "",
        "## Reading this page",
        "",
        "- **Hyperparameter Importance** rates `seed` beside the learning rate. In a seeded grid "
        "`seed` is a replicate, not something to tune: its share is how much runs of one rate "
        "differ, the noise a learning rate's effect must stand out from. Compare rates with the "
        "paired tests below, not with that panel.",
        "- **Best Trial** is the single best cell: one (lucky) seed. Read the mean and 95% "
        "interval over seeds instead.",
        "- The figures: validation curves per rate (each seed thin, the mean bold, its 95% "
        "t-interval shaded), and the test metrics per rate (a dot per seed).",
        "",
        *protocol_lines(results.spec),
        "",
        *tables[key_end:],
        *paired_tables(results),
    ]
    return "\n".join(lines) + "\n"


def _progress(results: StudyResults) -> str:
    text = f"{results.complete} of {results.cells} cells complete"
    if not results.missing:
        return text + "."
    names = ", ".join(f"`{m['cell']}` ({m['state']})" for m in results.missing)
    return f"{text}; not yet in the tables: {names}."
