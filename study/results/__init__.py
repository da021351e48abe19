"""A study's results: typed records, statistics, tables, figures, the export, dashboard views.

It reads studies through the grid room and writes nothing a worker relies on; workers never
import it (the CLI hands the dashboard refresh to them as a callback).
"""

from study.results._collect import Group, StudyResults, collect, format_value
from study.results._export import FORMATS, render, to_csv, to_json, trial_columns, write_export
from study.results._lr_find_figure import lr_find_plotly, lr_find_png
from study.results._lr_find_views import LR_FIND_FIGURE_ID, attach_lr_find
from study.results._markdown import markdown_tables, to_markdown
from study.results._reviewer import Review
from study.results._server import dashboard_artifact_store, serve
from study.results._stats import (
    PairedTest,
    Ranking,
    Summary,
    paired_over_seeds,
    per_epoch,
    rank,
    summarize,
)
from study.results._status import (
    failure_lines,
    progress_line,
    status_table,
    study_line,
    summary_table,
)
from study.results._views import (
    FIGURE_ID,
    TEST_FIGURE_ID,
    comparison_figure,
    refresh_views,
    study_note,
    test_figure,
)

__all__ = [
    "FIGURE_ID",
    "FORMATS",
    "LR_FIND_FIGURE_ID",
    "TEST_FIGURE_ID",
    "Group",
    "PairedTest",
    "Ranking",
    "Review",
    "StudyResults",
    "Summary",
    "attach_lr_find",
    "collect",
    "comparison_figure",
    "dashboard_artifact_store",
    "failure_lines",
    "format_value",
    "lr_find_plotly",
    "lr_find_png",
    "markdown_tables",
    "paired_over_seeds",
    "per_epoch",
    "progress_line",
    "rank",
    "refresh_views",
    "render",
    "serve",
    "status_table",
    "study_line",
    "study_note",
    "summarize",
    "summary_table",
    "test_figure",
    "to_csv",
    "to_json",
    "to_markdown",
    "trial_columns",
    "write_export",
]
