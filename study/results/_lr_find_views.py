"""A range test's curve on an existing study: its figure on the study's dashboard page, its CSV
and PNG among the study's artifacts.

optuna-dashboard keeps each Plotly figure in study system attributes keyed by the figure's id
(``dashboard:plot_data:<id>:<chunk>``): the range test's figure and the comparison figure that
``refresh_views`` rewrites after every trial sit side by side, and neither write touches the
other.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
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
    of earlier runs, since Optuna's artifact records cannot be removed.

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
    # As in refresh_views: two writers of one figure at once would interleave its chunks.
    with study_lock(study._storage, study.study_name):
        save_plotly_graph_object(study, figure, graph_object_id=LR_FIND_FIGURE_ID)
    return [
        upload_artifact(artifact_store=store, file_path=os.fspath(path), study_or_trial=study)
        for path in files
    ]
