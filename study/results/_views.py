"""What optuna-dashboard shows on a study's page: the comparison figure and the study note.

optuna-dashboard reads everything from the storage: a Plotly figure and a Markdown note kept in
the study's system attributes. This module writes them from the study's results.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from storage import study_lock
from study.results._collect import StudyResults, collect
from study.results._markdown import markdown_tables
from study.results._stats import per_epoch

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

_logger = logging.getLogger(__name__)

FIGURE_ID = "learning-rate-comparison"


def refresh_views(study: optuna.Study) -> StudyResults:
    """Rewrite the study's comparison figure and note from its trials as they are now.

    Safe from many workers at once: the study lock keeps two writers from interleaving the
    chunks that a figure or note is stored in.
    """
    from optuna_dashboard import save_note, save_plotly_graph_object

    results = collect(study)
    figure = comparison_figure(results)
    note = study_note(results)
    with study_lock(study._storage, study.study_name):
        save_plotly_graph_object(study, figure, graph_object_id=FIGURE_ID)
        save_note(study, note)
    _logger.info(
        "study %r: dashboard figure and note refreshed (%d of %d cells complete)",
        study.study_name,
        results.complete,
        results.cells,
    )
    return results


def comparison_figure(results: StudyResults) -> go.Figure:
    """Validation accuracy and loss per epoch, mean and ±1 SD band over seeds, per rate."""
    import plotly.colors
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from study.results._figures import epoch_series

    titles = ("Validation accuracy", "Validation loss")
    figure = make_subplots(rows=1, cols=2, subplot_titles=titles)
    records = {record["trial"]: record for record in results.trials}
    palette = plotly.colors.qualitative.Plotly
    for index, group in enumerate(results.groups):
        color = palette[index % len(palette)]
        for column, metric in enumerate(("val_accuracy", "val_loss"), start=1):
            points = [
                (epoch, s, s.mean)
                for epoch, s in enumerate(per_epoch(epoch_series(group, records, metric)), 1)
                if s.mean is not None
            ]
            band = [(e, mean - s.sd, mean + s.sd) for e, s, mean in points if s.sd is not None]
            if band:
                figure.add_trace(
                    go.Scatter(
                        x=[b[0] for b in band] + [b[0] for b in reversed(band)],
                        y=[b[2] for b in band] + [b[1] for b in reversed(band)],
                        fill="toself",
                        mode="lines",
                        fillcolor=color,
                        opacity=0.2,
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
                    customdata=[
                        [s.sd if s.sd is not None else float("nan"), s.n] for _, s, _ in points
                    ],
                    hovertemplate="epoch %{x}: mean %{y:.4f}, SD %{customdata[0]:.4f}, "
                    "n %{customdata[1]}",
                    mode="lines+markers",
                    name=group.label,
                    line={"color": color},
                    legendgroup=group.label,
                    showlegend=column == 1,
                ),
                row=1,
                col=column,
            )
    figure.update_xaxes(title_text="epoch")
    figure.update_layout(
        title=(
            f"Learning rates compared: mean ± 1 SD over seeds "
            f"({results.complete} of {results.cells} cells complete)"
        ),
        # Below the plots, so the two panels keep the width of the dashboard's half-width card.
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
    )
    return figure


def study_note(results: StudyResults) -> str:
    """The study note: protocol, progress, the plain statistics sentence and the tables."""
    lines = [f"# {results.study}", "", *_protocol(results.spec), ""]
    lines.append(f"**Progress:** {results.complete} of {results.cells} cells complete.")
    if results.missing:
        names = ", ".join(f"`{m['cell']}` ({m['state']})" for m in results.missing)
        lines.append(f"Not yet in the tables: {names}.")
    lines += ["", f"**Result.** {results.headline()}", ""]
    lines += markdown_tables(results)
    return "\n".join(lines) + "\n"


def _protocol(spec: dict[str, Any] | None) -> list[str]:
    if spec is None:
        return ["Protocol: not recorded (the study was not made from an lrstudy spec)."]
    train, data, study = spec["train"], spec["data"], spec["study"]
    grid = "; ".join(f"{axis} {values}" for axis, values in spec["grid"].items())
    return [
        f"**Protocol:** {train['model']} ({train['weights']} weights), "
        f"{train['image_size']} px, {train['epochs']} epochs, batch {train['batch_size']}, "
        f"{train['optimizer']}; data split `{data['split']}` (split seed {data['split_seed']}); "
        f"objective `{study['objective']}` of the {study['reduce']} epoch; test weights: "
        f"{train['test_weights']}.",
        "",
        f"**Grid:** {grid}.",
    ]
