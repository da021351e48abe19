"""A range test's curve on an existing study: its figure on the study's dashboard page, its CSV
and PNG among the study's artifacts.

optuna-dashboard keeps each Plotly figure in study system attributes keyed by the figure's id
(``dashboard:plot_data:<id>:<chunk>``): the range test's figure and the comparison figure that
``refresh_views`` rewrites after every trial sit side by side, and neither write touches the
other.

Optuna's artifact records cannot be removed or renamed, and the dashboard lists them by file
name: each attached run's files are numbered (``lr_find-1.csv``, ``lr_find-2.csv``, ...), so that
the newest, which the figure shows, is the highest number.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from storage import study_lock
from study.grid import artifact_store, stored_locations, study_folder, study_uid
from study.results._lr_find_figure import lr_find_plotly
from trainer import InputError

if TYPE_CHECKING:
    import optuna

    from trainer import LrFindResult

LR_FIND_FIGURE_ID = "lr-find"


def attach_lr_find(
    study: optuna.Study,
    result: LrFindResult,
    files: Iterable[str | os.PathLike[str]],
    *,
    artifacts: str | None = None,
) -> list[str]:
    """Show ``result`` on the study's page and upload ``files`` as study artifacts.

    The figure replaces the study's previous range-test figure; the files are added to those
    of earlier runs under this run's number, ``lr_find.csv`` as ``lr_find-N.csv``.

    Args:
        study: The study, made by lrstudy (its stored spec names its artifacts folder).
        result: The range test to draw.
        files: Its CSV and PNG.
        artifacts: This machine's artifacts folder, if not the stored one. Defaults to `None`.

    Returns:
        The artifact ids of ``files``, in order.

    Raises:
        InputError: Neither ``artifacts`` nor a stored spec says where the study's files go.
    """
    from optuna.artifacts import upload_artifact
    from optuna_dashboard import save_plotly_graph_object

    root, named = stored_locations(study.user_attrs, artifacts)
    if not root:
        raise InputError(
            f"study {study.study_name!r} holds no lrstudy spec, so its artifacts folder is "
            "unknown; pass --artifacts DIR"
        )
    store = artifact_store(study_folder(root, study.study_name, study_uid(study)), named)
    figure = lr_find_plotly(result)
    paths = [Path(path) for path in files]
    # As in refresh_views: two writers of one figure at once would interleave its chunks. Under
    # the lock, two runs attached at once also take different numbers.
    with study_lock(study._storage, study.study_name), tempfile.TemporaryDirectory() as scratch:
        save_plotly_graph_object(study, figure, graph_object_id=LR_FIND_FIGURE_ID)
        number = _last_run(study, paths) + 1
        ids = []
        for path in paths:
            numbered = Path(scratch) / f"{path.stem}-{number}{path.suffix}"
            shutil.copyfile(path, numbered)  # Optuna names an artifact after its file
            ids.append(
                upload_artifact(
                    artifact_store=store, file_path=os.fspath(numbered), study_or_trial=study
                )
            )
    return ids


def _last_run(study: optuna.Study, paths: list[Path]) -> int:
    """The highest run number among the study's artifacts named like ``paths``; 0 if none."""
    from optuna.artifacts import get_all_artifact_meta

    patterns = [
        re.compile(rf"{re.escape(path.stem)}-(\d+){re.escape(path.suffix)}") for path in paths
    ]
    return max(
        (
            int(match[1])
            for meta in get_all_artifact_meta(study)
            for pattern in patterns
            if (match := pattern.fullmatch(meta.filename))
        ),
        default=0,
    )
