"""A study's artifact store: each trial's files, uploaded where optuna-dashboard finds them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts.protocol import ArtifactStore

_logger = logging.getLogger(__name__)

ARTIFACT_FOLDER = "dashboard-artifacts"


def artifact_store(artifacts: str | Path, study_name: str) -> ArtifactStore:
    """The study's artifact store: ``<artifacts>/<study name>/dashboard-artifacts``.

    It sits beside the cells' own folders, so machines that share the artifacts folder (as
    they must, for resuming) share the store too.
    """
    from optuna.artifacts import FileSystemArtifactStore

    folder = Path(artifacts) / study_name / ARTIFACT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def upload_cell_files(trial: optuna.Trial, store: ArtifactStore, out_dir: str | Path) -> None:
    """Attach the cell's history, predictions and result files in ``out_dir`` to ``trial``."""
    from optuna.artifacts import upload_artifact

    from trainer._train import HISTORY_FILE, PREDICTIONS_FILE, RESULT_FILE

    for name in (HISTORY_FILE, PREDICTIONS_FILE, RESULT_FILE):
        path = Path(out_dir) / name
        if path.is_file():
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
        else:
            _logger.warning("trial %d: no %s in %s to upload", trial.number, name, path.parent)
