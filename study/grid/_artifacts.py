"""A study's folder of files and its artifact store, where optuna-dashboard finds them."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.grid import _attrs

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts.protocol import ArtifactStore

_logger = logging.getLogger(__name__)

ARTIFACT_FOLDER = "dashboard-artifacts"
TRACEBACK_PREFIX = "traceback-trial-"
"""A failed trial's traceback file in its cell's folder is ``traceback-trial-<number>.txt``; its
artifact is ``traceback-trial-<number>.jsonl``, a row per line, which optuna-dashboard's
artifact viewer shows as a table (it previews only images, media, CSV and JSONL)."""


def study_folder(artifacts: str | Path, study_name: str, uid: str | None) -> Path:
    """The folder of one study's files: ``<artifacts>/<study name>-<first 8 hex of its id>``.

    The id (``_attrs.study_uid``) keeps a study made again under the same name (after its
    database was deleted, say) from meeting the old one's checkpoints. Studies made before
    studies had an id keep their folder ``<artifacts>/<study name>``.
    """
    return Path(artifacts) / (study_name if uid is None else f"{study_name}-{uid[:8]}")


def store_folder(folder: str | Path, named: str = "") -> Path:
    """Where the artifact store of the study whose folder (``study_folder``) is ``folder`` is.

    The spec's ``study.artifact_store`` names it; by default ("") it is
    ``<folder>/dashboard-artifacts``, beside the cells' own folders, so machines that share the
    artifacts folder (as they must, for resuming) share the store too. A store named elsewhere
    (a share the laptop that exports also mounts) may serve many studies: artifact ids are UUIDs.
    """
    return Path(named) if named else Path(folder) / ARTIFACT_FOLDER


def artifact_store(folder: str | Path, named: str = "") -> ArtifactStore:
    """The study's artifact store (``store_folder``), made when it is missing: for writers."""
    from optuna.artifacts import FileSystemArtifactStore

    store = store_folder(folder, named)
    store.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(store))


def stored_locations(
    user_attrs: Mapping[str, Any], artifacts: str | None = None
) -> tuple[str | None, str]:
    """(artifacts folder, named artifact store) from a study's stored spec.

    ``artifacts``, this machine's artifacts folder, overrides the stored one; the folder is None
    for a study without a spec, the store "" where the spec names none (``study.artifact_store``).
    """
    spec = user_attrs.get(_attrs.SPEC)
    section = spec.get("study", {}) if isinstance(spec, dict) else {}
    return artifacts or section.get("artifacts") or None, section.get("artifact_store") or ""


def existing_artifact_store(
    study_name: str,
    user_attrs: Mapping[str, Any],
    uid: str | None,
    artifacts: str | None = None,
) -> ArtifactStore | None:
    """A study's artifact store where this machine has one; None otherwise.

    Readers (export, dashboard) call this, not ``artifact_store``, which makes missing folders.
    A store the spec names (``study.artifact_store``) is read where it says.

    Args:
        study_name: The study's name.
        user_attrs: The study's user attributes, which hold its spec (``_attrs.SPEC``).
        uid: The study's id (``_attrs.study_uid``); None for studies made before ids.
        artifacts: This machine's artifacts folder, when it is not (or no longer) where the
            stored spec says. Defaults to `None`: the spec's ``study.artifacts``. Used only
            where the spec names no store of its own.
    """
    from optuna.artifacts import FileSystemArtifactStore

    root, named = stored_locations(user_attrs, artifacts)
    if named:
        store = Path(named)
    elif root:
        store = store_folder(study_folder(root, study_name, uid))
    else:
        return None
    return FileSystemArtifactStore(str(store)) if store.is_dir() else None


def upload_cell_files(trial: optuna.Trial, store: ArtifactStore, out_dir: str | Path) -> None:
    """Attach the cell's history, predictions and result files in ``out_dir`` to ``trial``."""
    from optuna.artifacts import upload_artifact

    from trainer._train import (
        HISTORY_FILE,
        PREDICTIONS_FILE,
        RESULT_FILE,
        VAL_PREDICTIONS_FILE,
    )

    for name in (HISTORY_FILE, PREDICTIONS_FILE, VAL_PREDICTIONS_FILE, RESULT_FILE):
        path = Path(out_dir) / name
        if path.is_file():
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
        else:
            _logger.warning("trial %d: no %s in %s to upload", trial.number, name, path.parent)


def keep_traceback(
    trial: optuna.Trial, store: ArtifactStore | None, out_dir: str | Path, text: str
) -> Path | None:
    """Write a failed trial's traceback into its cell's folder and attach it to the trial as
    rows of JSONL (when ``store``, the study's artifact store, could be opened).

    The file outlives the database row and the artifact shows in optuna-dashboard; the path is
    recorded on the trial for ``lrstudy status``. Never raises: the full disk or the lost
    database that failed the trial may fail this too, and the trial's own error must go on.

    Returns:
        The file, or None when it could not be written (logged).
    """
    from optuna.artifacts import upload_artifact

    path = Path(out_dir) / f"{TRACEBACK_PREFIX}{trial.number}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        _logger.warning(
            "trial %d: cannot write its traceback to %s: %s", trial.number, path, error
        )
        return None
    try:
        _attrs.record_traceback_file(trial, str(path))
        if store is not None:
            with tempfile.TemporaryDirectory() as scratch:
                rows = Path(scratch) / path.with_suffix(".jsonl").name
                rows.write_text(
                    "".join(
                        json.dumps({"line": number, "text": line}) + "\n"
                        for number, line in enumerate(text.splitlines(), start=1)
                    ),
                    encoding="utf-8",
                )
                upload_artifact(artifact_store=store, file_path=str(rows), study_or_trial=trial)
    except Exception as error:  # whatever it is, the trial's own failure matters more
        _logger.warning("trial %d: cannot attach its traceback %s: %s", trial.number, path, error)
    return path
