"""A study's results: typed records, statistics, tables, figures, the export, dashboard views.

It reads studies through the grid room and writes nothing a worker relies on; workers never
import it (the CLI hands the dashboard refresh to them as a callback).
"""

from study.results._collect import Group, StudyResults, collect, format_value
from study.results._export import FORMATS, render, to_csv, to_json, trial_columns, write_export
from study.results._markdown import markdown_tables, to_markdown
from study.results._server import dashboard_artifact_store, serve
from study.results._stats import Comparison, Summary, compare, per_epoch, summarize
from study.results._status import progress_line, status_table, summary_table
from study.results._views import FIGURE_ID, comparison_figure, refresh_views, study_note

__all__ = [
    "FIGURE_ID",
    "FORMATS",
    "Comparison",
    "Group",
    "StudyResults",
    "Summary",
    "collect",
    "compare",
    "comparison_figure",
    "dashboard_artifact_store",
    "format_value",
    "markdown_tables",
    "per_epoch",
    "progress_line",
    "refresh_views",
    "render",
    "serve",
    "status_table",
    "study_note",
    "summarize",
    "summary_table",
    "to_csv",
    "to_json",
    "to_markdown",
    "trial_columns",
    "write_export",
]
