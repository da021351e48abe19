"""Figures of a learning-rate range test: a PNG for the export, a Plotly figure for the dashboard.

Both show the loss per batch and its smoothed curve against the rate (log axis), the steepest
descent, the divergence point and the suggested grid. Matplotlib runs on the Agg backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainer import InputError

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from trainer import LrFindResult

_DPI = 120


@dataclass(frozen=True)
class _Marks:
    """What both figures draw besides the curves."""

    title: str  # short enough for optuna-dashboard's half-width card
    detail: str  # the run: model, seed, why it stopped
    steepest: tuple[float, float] | None  # (rate, smoothed loss)
    divergence: float | None
    grid: tuple[float, ...]  # empty when the curve gives no suggestion
    y_top: float  # above the curve before the stop: a diverged batch's loss would flatten it


def lr_find_png(result: LrFindResult, path: str | os.PathLike[str]) -> None:
    """Draw ``result`` into the PNG file ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    marks = _marks(result)
    rates = [row.learning_rate for row in result.rows]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(rates, [row.loss for row in result.rows], color="0.6", lw=0.8, label="loss")
    axes.plot(rates, [row.smoothed_loss for row in result.rows], color="C0", label="smoothed")
    for index, rate in enumerate(marks.grid):
        label = "suggested grid" if index == 0 else None
        axes.axvline(rate, color="C2", ls=":", lw=1.2, label=label)
    if marks.steepest is not None:
        axes.plot(*marks.steepest, "o", color="C1", label=f"steepest {marks.steepest[0]:.2g}")
    if marks.divergence is not None:
        axes.axvline(
            marks.divergence, color="C3", ls="--", lw=1, label=f"stop {marks.divergence:.2g}"
        )
    axes.set_xscale("log")
    axes.set_ylim(0, marks.y_top)
    title = f"{marks.title} ({marks.detail})"
    axes.set(xlabel="learning rate", ylabel="training loss", title=title)
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def lr_find_plotly(result: LrFindResult) -> go.Figure:
    """``result`` as a Plotly figure, for optuna-dashboard."""
    import plotly.graph_objects as go

    from study.results._views import card_layout

    marks = _marks(result)
    rates = [row.learning_rate for row in result.rows]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=rates,
            y=[row.loss for row in result.rows],
            mode="lines",
            name="loss",
            line={"color": "#999999", "width": 1},
        )
    )
    figure.add_trace(
        go.Scatter(
            x=rates,
            y=[row.smoothed_loss for row in result.rows],
            mode="lines",
            name="smoothed",
            line={"color": "#1f77b4"},
        )
    )
    # Vertical lines as two-point traces: shapes on a log axis would need log10 coordinates.
    for index, rate in enumerate(marks.grid):
        figure.add_trace(_vertical(rate, marks.y_top, "suggested grid", "#2ca02c", "dot", index))
    if marks.steepest is not None:
        figure.add_trace(
            go.Scatter(
                x=[marks.steepest[0]],
                y=[marks.steepest[1]],
                mode="markers",
                name=f"steepest {marks.steepest[0]:.2g}",
                marker={"color": "#ff7f0e", "size": 9},
            )
        )
    if marks.divergence is not None:
        name = f"stop {marks.divergence:.2g}"
        figure.add_trace(_vertical(marks.divergence, marks.y_top, name, "#d62728", "dash", 0))
    figure.update_xaxes(type="log", title_text="learning rate")
    figure.update_yaxes(range=[0, marks.y_top], title_text="training loss")
    card_layout(figure, title=marks.title, key=marks.detail)
    return figure


def _marks(result: LrFindResult) -> _Marks:
    try:
        grid = result.suggested_grid()
    except InputError:
        grid = ()
    steepest = None
    if result.steepest_lr is not None:
        row = next(row for row in result.curve if row.learning_rate == result.steepest_lr)
        steepest = (row.learning_rate, row.smoothed_loss)
    stop = f", stopped: {result.stopped_early}" if result.stopped_early else ""
    return _Marks(
        title="Learning-rate range test",
        detail=f"{result.config.model}, seed {result.config.seed}{stop}",
        steepest=steepest,
        divergence=result.divergence_lr,
        grid=grid,
        y_top=1.2 * max((row.smoothed_loss for row in result.curve), default=1.0),
    )


def _vertical(rate: float, top: float, name: str, color: str, dash: str, index: int) -> go.Scatter:
    import plotly.graph_objects as go

    return go.Scatter(
        x=[rate, rate],
        y=[0, top],
        mode="lines",
        name=name,
        legendgroup=name,
        showlegend=index == 0,
        line={"color": color, "dash": dash, "width": 1},
        hovertemplate=f"{rate:g}<extra>{name}</extra>",
    )
