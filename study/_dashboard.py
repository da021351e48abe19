"""What optuna-dashboard shows for a study of this service, and serving it.

optuna-dashboard reads everything from the storage: flat trial user attributes for its tables, a
Plotly figure and a Markdown note kept in the study's system attributes, and per-trial artifacts
whose files live in an artifact store. This module writes those, and runs the dashboard's own
app with the artifact store the studies use.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from storage import study_lock
from study._export import StudyResults, collect
from study._markdown import markdown_tables
from study._stats import per_epoch
from trainer import TEST_METRICS, InputError

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go
    from optuna.artifacts.protocol import ArtifactStore
    from optuna.storages import BaseStorage

_logger = logging.getLogger(__name__)

ARTIFACT_FOLDER = "dashboard-artifacts"
FIGURE_ID = "learning-rate-comparison"


def artifact_store(artifacts: str | Path, study_name: str) -> ArtifactStore:
    """The study's artifact store: ``<artifacts>/<study name>/dashboard-artifacts``.

    It sits beside the cells' own folders, so machines that share the artifacts folder (as
    they must, for resuming) share the store too.
    """
    from optuna.artifacts import FileSystemArtifactStore

    folder = Path(artifacts) / study_name / ARTIFACT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def record_trial(trial: optuna.Trial, store: ArtifactStore | None, *, reduce: str) -> None:
    """Add the flat attributes and artifacts that the dashboard shows for a finished cell.

    Call it at the end of the objective, while the trial still runs (Optuna refuses attributes
    on a finished trial), after the nested ``final``, ``best``, ``test`` attributes are set.
    Sets ``val_loss`` (of the epoch the objective comes from) and ``test_<metric>``; uploads
    the cell's history, predictions and result files found in its ``out_dir``.

    Args:
        trial: The running trial.
        store: Where the files go; None uploads nothing.
        reduce: The study's ``reduce``, ``"last"`` or ``"best"``.
    """
    from optuna.artifacts import upload_artifact

    from trainer._train import HISTORY_FILE, PREDICTIONS_FILE, RESULT_FILE

    attrs = trial.user_attrs
    epoch = attrs.get("final" if reduce == "last" else "best") or {}
    trial.set_user_attr("val_loss", epoch.get("val_loss"))
    test = attrs.get("test") or {}
    for name in TEST_METRICS:
        trial.set_user_attr(f"test_{name}", test.get(name))
    if store is None or not attrs.get("out_dir"):
        return
    for name in (HISTORY_FILE, PREDICTIONS_FILE, RESULT_FILE):
        path = Path(attrs["out_dir"]) / name
        if path.is_file():
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
        else:
            _logger.warning("trial %d: no %s in %s to upload", trial.number, name, path.parent)


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

    from study._figures import epoch_series

    titles = ("Validation accuracy", "Validation loss")
    figure = make_subplots(rows=1, cols=2, subplot_titles=titles)
    records = {record["trial"]: record for record in results.trials}
    palette = plotly.colors.qualitative.Plotly
    for index, group in enumerate(results.groups):
        color = palette[index % len(palette)]
        for column, metric in enumerate(("val_accuracy", "val_loss"), start=1):
            points = [
                (epoch, s)
                for epoch, s in enumerate(per_epoch(epoch_series(group, records, metric)), 1)
                if s.mean is not None
            ]
            band = [(e, s.mean - s.sd, s.mean + s.sd) for e, s in points if s.sd is not None]
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
                    x=[e for e, _ in points],
                    y=[s.mean for _, s in points],
                    customdata=[
                        [s.sd if s.sd is not None else float("nan"), s.n] for _, s in points
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


def dashboard_artifact_store(
    storage: BaseStorage, artifacts: str | None = None
) -> ArtifactStore | None:
    """One artifact store over the stores of every lrstudy study in ``storage``.

    Each study's store is found from its stored spec, or under ``artifacts`` (this machine's
    artifacts folder) when given. Artifact ids are UUIDs, so one store serves all studies.
    """
    stores = []
    for study in storage.get_all_studies():
        spec = study.user_attrs.get("spec")
        root = artifacts or (spec["study"]["artifacts"] if isinstance(spec, dict) else None)
        if root and (Path(root) / study.study_name / ARTIFACT_FOLDER).is_dir():
            stores.append(artifact_store(root, study.study_name))
    return _Stores(stores) if stores else None


def serve(storage: BaseStorage, *, host: str, port: int, artifacts: str | None = None) -> None:
    """Run optuna-dashboard's app for ``storage`` until interrupted.

    Before serving, the figure and note of every lrstudy study are refreshed once, so studies
    that finished before their workers refreshed them show current views too.

    Args:
        storage: The studies' storage.
        host: Address to listen on; keep 127.0.0.1 unless the network is trusted.
        port: Port to listen on.
        artifacts: This machine's artifacts folder. Defaults to `None` (each study's own).

    Raises:
        InputError: ``port`` is taken, or ``host`` cannot be listened on.
    """
    import optuna_dashboard

    from study._grid import GRID_ATTR, load_grid_study

    _check_address(host, port)
    for frozen in storage.get_all_studies():
        if GRID_ATTR in frozen.system_attrs:
            refresh_views(load_grid_study(storage, frozen.study_name))
    store = dashboard_artifact_store(storage, artifacts)
    if store is None:
        _logger.warning("no study has an artifact store here: trial artifacts are not shown")
    _logger.info("optuna-dashboard on http://%s:%d/ (Ctrl-C stops it)", host, port)
    try:
        optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)
    except OSError as error:  # Taken between our check and the server's bind.
        raise _address_error(host, port, error) from None


def _check_address(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise InputError(f"--port must be between 1 and 65535; got {port}; pass e.g. --port 8080")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise _address_error(host, port, error) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the server does: a port left in TIME_WAIT by an earlier run is free to take.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise _address_error(host, port, error) from None


def _address_error(host: str, port: int, error: OSError) -> InputError:
    if error.errno == errno.EADDRINUSE:
        return InputError(
            f"--port {port} is already in use on {host}; pass another port, e.g. "
            f"--port {port + 1 if port < 65535 else 8080}, or stop what listens there"
        )
    return InputError(
        f"--host {host!r} cannot be listened on ({error.strerror or error}); "
        "pass an address of this machine, e.g. --host 127.0.0.1"
    )


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


class _Stores:
    """Several artifact stores as one: reads from the one that has the artifact."""

    def __init__(self, stores: Iterable[ArtifactStore]) -> None:
        self.stores = list(stores)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        from optuna.artifacts.exceptions import ArtifactNotFound

        for store in self.stores:
            try:
                return store.open_reader(artifact_id)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of the artifact stores")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.stores[0].write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        for store in self.stores:
            try:
                store.remove(artifact_id)
                return
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of the artifact stores")
