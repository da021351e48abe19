"""The names a study keeps its state under, and the code that records and reads a trial's.

Optuna stores strings as keys: a key renamed in one place and not another fails silently. So
every attribute lrstudy puts on a study or trial is named here; what a trial records while its
cell trains is written by a ``record_*`` function here, and everything is read back as a typed
``TrialRecord`` by everyone else (results, status). The grid's own writes, with these names, are
creating a study (``_grid``, ``_stored_spec``) and re-queuing a trial (``_retry``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from trainer import HISTORY_COLUMNS, TEST_METRICS

# Study system attributes: the grid (axis -> values), whether every cell's trial exists, the
# retry budget of a failing cell, the study's own id (a UUID no other study shares, which names
# its artifacts folder); study user attributes: the spec and its protocol fingerprint.
GRID = "grid"
GRID_READY = "grid_ready"
MAX_RETRIES = "max_retries"
STUDY_UID = "study_uid"
SPEC = "spec"
SPEC_FINGERPRINT = "spec_fingerprint"

# Trial system attributes: GridSampler's own two, then the retry lineage and the traceback.
GRID_ID = "grid_id"
SEARCH_SPACE = "search_space"
RETRIES_USED = "retries_used"
FAILED_TRIAL = "failed_trial"
RETRY_HISTORY = "retry_history"
TRACEBACK = "traceback"

# Trial user attributes (what optuna-dashboard shows in its tables).
WORKER_ID = "worker_id"
HOST = "host"
ERROR = "error"
CELL = "cell"
EPOCHS = "epochs"
OUT_DIR = "out_dir"
TRACEBACK_FILE = "traceback_file"
HISTORY = "history"
VAL_LOSS = "val_loss"
_RESULT_KEYS = ("final", "best", "test", "diverged", "diverged_epoch", "epochs_run")
_RESULT_PATHS = ("predictions_path", "checkpoint_path")
_ENVIRONMENT_KEYS = ("device", "backend")
DURATION_S = "duration_s"

INTERRUPTED = "interrupted"
"""The ``error`` of a trial stopped by SIGTERM or Ctrl-C: it spends no retry."""
LOST = "worker lost: no heartbeat within the grace period"
"""The reason shown for a trial failed as stale (its worker could not record one)."""


@dataclass(frozen=True)
class TrialRecord:
    """What lrstudy recorded on one trial, as results and status read it.

    ``final`` and ``best`` hold ``epoch``, ``val_loss`` and ``val_accuracy``; ``test`` the test
    metrics (``trainer.BinaryMetrics``) with ``weights`` and ``epoch``; ``history`` maps each of
    ``trainer.HISTORY_COLUMNS`` to its per-epoch values. Unrecorded values are None.
    """

    number: int
    state: str
    value: float | None
    worker_id: str | None
    host: str | None
    error: str | None
    traceback: str | None
    traceback_file: str | None
    cell: str | None
    epochs: int | None
    out_dir: str | None
    history: dict[str, list[Any]] | None
    final: dict[str, Any] | None
    best: dict[str, Any] | None
    test: dict[str, Any] | None
    diverged: bool | None
    diverged_epoch: int | None
    epochs_run: int | None
    predictions_path: str | None
    checkpoint_path: str | None
    device: str | None
    backend: str | None
    duration_s: float | None
    retries_used: int


def read_trial(trial: FrozenTrial) -> TrialRecord:
    """The record of a trial of any state (a waiting one has only its number and state)."""
    user, system = trial.user_attrs, trial.system_attrs
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        value=trial.value,
        worker_id=user.get(WORKER_ID),
        host=user.get(HOST),
        error=user.get(ERROR),
        traceback=system.get(TRACEBACK),
        traceback_file=user.get(TRACEBACK_FILE),
        cell=user.get(CELL),
        epochs=user.get(EPOCHS),
        out_dir=user.get(OUT_DIR),
        history=user.get(HISTORY),
        final=user.get("final"),
        best=user.get("best"),
        test=user.get("test"),
        diverged=user.get("diverged"),
        diverged_epoch=user.get("diverged_epoch"),
        epochs_run=user.get("epochs_run"),
        predictions_path=user.get("predictions_path"),
        checkpoint_path=user.get("checkpoint_path"),
        device=user.get("device"),
        backend=user.get("backend"),
        duration_s=user.get(DURATION_S),
        retries_used=retries_used(trial),
    )


def retries_used(trial: FrozenTrial) -> int:
    """How many retries of its cell came before ``trial``."""
    return int(trial.system_attrs.get(RETRIES_USED, 0))


def record_worker(storage: BaseStorage, trial_id: int, worker_id: str, host: str) -> None:
    """Who runs the trial: known before the objective starts, so also for one that fails early."""
    storage.set_trial_user_attr(trial_id, WORKER_ID, worker_id)
    storage.set_trial_user_attr(trial_id, HOST, host)


def record_failure(storage: BaseStorage, trial_id: int, error: str, traceback: str) -> None:
    """Why the trial failed: one line for tables, the full traceback for whoever debugs it."""
    # Failed as stale meanwhile: the sweep has re-queued the cell, nothing more to record.
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial_id, ERROR, error)
        storage.set_trial_system_attr(trial_id, TRACEBACK, traceback)


def record_traceback_file(trial: optuna.Trial, path: str) -> None:
    """Where the failed trial's traceback lies as a file (its cell's folder), for ``status``."""
    trial.set_user_attr(TRACEBACK_FILE, path)


def record_cell(trial: optuna.Trial, cell: str, epochs: int, out_dir: str) -> None:
    """Which cell the trial trains, for how long, and where its files go."""
    trial.set_user_attr(CELL, cell)
    trial.set_user_attr(EPOCHS, epochs)
    trial.set_user_attr(OUT_DIR, out_dir)


def record_history(trial: optuna.Trial, history: Mapping[str, list[Any]]) -> None:
    """The per-epoch history so far (``HISTORY_COLUMNS`` -> values), rewritten each epoch."""
    trial.set_user_attr(HISTORY, dict(history))


def record_result(trial: optuna.Trial, result: Mapping[str, Any], *, reduce: str) -> None:
    """Store a finished cell's result (``trainer.CellResult.to_dict()``) on its running trial.

    Besides the nested records, ``val_loss`` (of the epoch the objective comes from) and
    ``test_<metric>`` are set flat, for optuna-dashboard's tables. The intermediate values
    were reported epoch by epoch (a resumed cell reports its checkpoint's epochs first).
    """
    history = {name: [row[name] for row in result["history"]] for name in HISTORY_COLUMNS}
    record_history(trial, history)
    for name in (*_RESULT_KEYS, *_RESULT_PATHS):
        trial.set_user_attr(name, result[name])
    for name in _ENVIRONMENT_KEYS:
        trial.set_user_attr(name, result["environment"].get(name))
    trial.set_user_attr(DURATION_S, result["seconds"])
    epoch = result["final" if reduce == "last" else "best"] or {}
    trial.set_user_attr(VAL_LOSS, epoch.get("val_loss"))
    test = result["test"] or {}
    for name in TEST_METRICS:
        trial.set_user_attr(f"test_{name}", test.get(name))


def study_uid(study: optuna.Study) -> str | None:
    """The study's own id; None for studies made before studies had one."""
    uid = study._storage.get_study_system_attrs(study._study_id).get(STUDY_UID)
    return None if uid is None else str(uid)


DEFAULT_MAX_RETRIES = 2
"""The budget of studies made before it was stored: what every study had then, fixed for them."""


def retry_budget(study: optuna.Study) -> int:
    """Retries a failing cell of ``study`` may spend, as stored when the study was created.

    Studies made before the budget had an attribute of its own keep it in their spec.
    """
    system = study._storage.get_study_system_attrs(study._study_id)
    if MAX_RETRIES in system:
        return int(system[MAX_RETRIES])
    spec = study._storage.get_study_user_attrs(study._study_id).get(SPEC)
    if isinstance(spec, dict):
        return int(spec.get("worker", {}).get("max_retries", DEFAULT_MAX_RETRIES))
    return DEFAULT_MAX_RETRIES
