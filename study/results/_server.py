"""Serving optuna-dashboard for lrstudy's studies, with the artifact stores they use."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO

from study.grid import _attrs, existing_artifact_store, load_grid_study
from study.results._views import refresh_views
from trainer import InputError

if TYPE_CHECKING:
    from optuna.artifacts.protocol import ArtifactStore
    from optuna.storages import BaseStorage

_logger = logging.getLogger(__name__)


def dashboard_artifact_store(
    storage: BaseStorage, artifacts: str | None = None
) -> ArtifactStore | None:
    """One artifact store over the stores of every lrstudy study in ``storage``.

    Each study's store is in its folder (``study_folder``) under the artifacts folder of its
    stored spec, or under ``artifacts`` (this machine's artifacts folder) when given. Artifact
    ids are UUIDs, so one store serves all studies.
    """
    found = (
        existing_artifact_store(
            study.study_name, study.user_attrs, study.system_attrs.get(_attrs.STUDY_UID), artifacts
        )
        for study in storage.get_all_studies()
    )
    stores = [store for store in found if store is not None]
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

    _check_address(host, port)
    for frozen in storage.get_all_studies():
        if _attrs.GRID in frozen.system_attrs:
            refresh_views(load_grid_study(storage, frozen.study_name))
    store = dashboard_artifact_store(storage, artifacts)
    if store is None:
        _logger.warning("no study has an artifact store here: trial artifacts are not shown")
    _logger.info("optuna-dashboard on http://%s:%d/ (Ctrl-C stops it)", host, port)
    try:
        optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)
    except OSError as error:  # Taken between our check and the server's bind.
        raise _address_error(host, port, error) from error


def _check_address(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise InputError(f"--port must be between 1 and 65535; got {port}; pass e.g. --port 8080")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise _address_error(host, port, error) from error
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the server does: a port left in TIME_WAIT by an earlier run is free to take.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise _address_error(host, port, error) from error


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
