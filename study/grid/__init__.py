"""Exactly-once scheduling of a study's grid: the only code that writes trial states.

Cells are created as WAITING trials and claimed by compare-and-set; failed cells are re-queued
within the study's retry budget, and by hand after it (``retry_cells``); a grid grows in place
(``extend_grid``); the trial-attribute schema (``_attrs``) is owned here and read by everyone
else through ``read_trial``.
"""

from study.grid._artifacts import (
    ARTIFACT_FOLDER,
    artifact_store,
    existing_artifact_store,
    stored_locations,
    study_folder,
    upload_cell_files,
)
from study.grid._attrs import (
    DEFAULT_MAX_RETRIES,
    INTERRUPTED,
    TrialRecord,
    read_trial,
    retries_used,
    retry_budget,
    study_uid,
)
from study.grid._grid import (
    CellState,
    cell_params,
    cell_states,
    create_grid_study,
    grid_of,
    load_grid_study,
)
from study.grid._lifecycle import Retried, extend_grid, failed_for_good, retry_cells
from study.grid._objective import CellObjective, TrialFailed, TrialLogTag
from study.grid._retry import RetryStaleCell, requeue_cell
from study.grid._stored_spec import create_from_spec, spec_from_study
from study.grid._worker import WorkerReport, run_worker

__all__ = [
    "ARTIFACT_FOLDER",
    "DEFAULT_MAX_RETRIES",
    "INTERRUPTED",
    "CellObjective",
    "CellState",
    "Retried",
    "RetryStaleCell",
    "TrialFailed",
    "TrialLogTag",
    "TrialRecord",
    "WorkerReport",
    "artifact_store",
    "cell_params",
    "cell_states",
    "create_from_spec",
    "create_grid_study",
    "existing_artifact_store",
    "extend_grid",
    "failed_for_good",
    "grid_of",
    "load_grid_study",
    "read_trial",
    "requeue_cell",
    "retries_used",
    "retry_budget",
    "retry_cells",
    "run_worker",
    "spec_from_study",
    "stored_locations",
    "study_folder",
    "study_uid",
    "upload_cell_files",
]
