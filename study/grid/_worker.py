"""The worker loop: claim a waiting grid cell, run any objective on it, record the outcome.

Why not ``study.optimize``: it asks for a new trial when none is waiting, and on a grid study
that new trial duplicates a cell; it also has no notion of a cell that must be retried. This loop
only ever claims the WAITING trials that ``create_grid_study`` made, so no surplus trial exists.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from types import FrameType
from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from storage import StorageError, call_reconnecting, lost_connection, rdb_backend
from study.grid import _attrs
from study.grid._attrs import INTERRUPTED, retry_budget
from study.grid._grid import cell_params, grid_of, load_grid_study
from study.grid._heartbeat import heartbeat
from study.grid._retry import requeue_cell
from study.spec import cell_key
from trainer import InputError

_logger = logging.getLogger(__name__)

DEFAULT_POLL_S = 5.0
_ERROR_CHARS = 500


@dataclass
class WorkerReport:
    """What one ``run_worker`` call did. ``interrupted``: it stopped on a signal or ``stop``."""

    worker_id: str
    completed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)
    interrupted: bool = False


class _Interrupted(BaseException):
    """Raised inside the objective by SIGTERM/SIGINT; a BaseException so that the objective's
    own ``except Exception`` cannot swallow it."""


def run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    worker_id: str,
    poll_s: float = DEFAULT_POLL_S,
    stop: threading.Event | None = None,
    after_trial: Callable[[optuna.Study], None] | None = None,
) -> WorkerReport:
    """Run grid cells of ``study`` one after another until every cell is complete or failed.

    Example:
        ``run_worker(load_grid_study(url, "lr"), objective, worker_id="gpu0")``, where
        ``objective(trial)`` calls ``trial.suggest_*`` for each grid axis (the grid sampler
        answers with the cell's values) and returns the metric.

    Note:
        Any number of workers, in any processes on any machines, may share one study: a claim
        is a compare-and-set of one WAITING trial to RUNNING, so each cell runs once at a time
        and completes once. While its objective runs, the worker records heartbeats (when the
        storage has them), so that a killed worker's trial is failed after the grace period and
        re-queued by another worker. An objective that raises fails its trial (user attribute
        ``error``, the full traceback kept beside it and logged at debug level) and re-queues
        the cell while it has retries left (the study's budget, set when it was created). On
        the main thread SIGTERM
        and SIGINT fail the running trial at once as ``interrupted``, re-queue it without
        spending a retry, and make this function return; elsewhere, set ``stop`` (the running
        trial then finishes first). With nothing waiting but cells running elsewhere, the
        worker polls, since those may come back. A grid grown meanwhile (``extend_grid``) is
        noticed before the next claim: the worker loads the study again and runs on.

    Args:
        study: A study made by ``create_grid_study`` or loaded by ``load_grid_study``.
        objective: Called with each claimed trial; returns the value to maximise.
        worker_id: Shown in logs and stored as the trial user attribute ``worker_id``.
        poll_s: Seconds between looks while other workers hold the last cells. Defaults to
            `5.0`.
        stop: Set it to make the worker return after the running trial. Defaults to a private
            event.
        after_trial: Called with the study after each trial this worker finished, complete or
            failed (the CLI refreshes the dashboard views there). Defaults to `None`.

    Returns:
        The trial numbers this worker completed, failed and discarded (finished after another
        worker had failed them as stale), and whether it was interrupted.
    """
    if not isinstance(study.sampler, optuna.samplers.GridSampler):
        raise InputError(
            f"study {study.study_name!r} was loaded with {type(study.sampler).__name__}, so "
            "trials would not get their cell's values; load it with load_grid_study"
        )
    stop = stop or threading.Event()
    report = WorkerReport(worker_id)
    host = socket.gethostname()
    claimer = _Claimer(study)
    max_retries = retry_budget(study)
    grid = grid_of(study)
    with _signals_interrupt(stop) as inside:
        while not stop.is_set():
            if call_reconnecting(partial(grid_of, study), what="reading the grid") != grid:
                study, grid = _reloaded(study)
                claimer = _Claimer(study)
            trial = call_reconnecting(claimer.claim, what="claiming a cell")
            if trial is None:
                pending = call_reconnecting(
                    partial(_cells_pending, study, max_retries), what="polling"
                )
                if not pending:
                    break
                stop.wait(poll_s)
                continue
            _run_trial(study, trial, objective, worker_id, host, max_retries, report, inside)
            if after_trial is not None:
                after_trial(study)
    report.interrupted = stop.is_set()
    _logger.info(
        "worker %s: done (%d complete, %d failed%s)",
        worker_id,
        len(report.completed),
        len(report.failed),
        ", interrupted" if report.interrupted else "",
    )
    return report


def _reloaded(study: optuna.Study) -> tuple[optuna.Study, dict[str, list[Any]] | None]:
    """The study loaded again, after ``lrstudy extend`` grew its grid.

    Optuna's copy of a study caches finished trials and parameter distributions, both of which
    the extension rewrote; a fresh copy reads them again.
    """
    fresh = load_grid_study(rdb_backend(study._storage) or study._storage, study.study_name)
    grid = grid_of(fresh)
    cells = math.prod(len(values) for values in (grid or {}).values())
    _logger.info("study %r: its grid grew to %d cells; loaded it again", study.study_name, cells)
    return fresh, grid


class _Claimer:
    """Claims WAITING cells for one worker.

    Listing the waiting trials costs a query per trial, so the list is kept and drawn from at
    random; it is refreshed when it runs out or when a claim is lost (the list is then stale).
    Random draws keep workers from all going for the same first cell, where all but one would
    lose the compare-and-set, each loss costing two writes.
    """

    def __init__(self, study: optuna.Study) -> None:
        self._study = study
        self._candidates: list[FrozenTrial] = []

    def claim(self) -> FrozenTrial | None:
        """Fail stale trials (re-queueing their cells), then claim a WAITING cell, if any.

        Returns the trial as listed (still marked WAITING in this copy).
        """
        storage = self._study._storage
        optuna.storages.fail_stale_trials(self._study)
        while True:
            if not self._candidates:
                self._candidates = [
                    t
                    for t in storage.get_all_trials(
                        self._study._study_id, deepcopy=False, states=(TrialState.WAITING,)
                    )
                    if _attrs.GRID_ID in t.system_attrs
                ]
                if not self._candidates:
                    return None
            trial = self._candidates.pop(random.randrange(len(self._candidates)))
            if self._take(trial):
                return trial
            self._candidates = []

    def _take(self, trial: FrozenTrial) -> bool:
        storage = self._study._storage
        # Beat before claiming: a trial that is RUNNING always has a heartbeat, so it goes stale
        # even if this process dies right after the claim (Optuna never fails a RUNNING trial
        # that has no heartbeat at all).
        if isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None:
            storage.record_heartbeat(trial._trial_id)
        try:
            return storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # Another worker claimed and finished it since we listed it.


def _cells_pending(study: optuna.Study, max_retries: int) -> bool:
    """True while a cell is WAITING or RUNNING, or was failed with retries left and can be
    re-queued now (its failer died between failing it and re-queueing it)."""
    latest: dict[int, FrozenTrial] = {}
    for trial in study._storage.get_all_trials(study._study_id, deepcopy=False):
        if _attrs.GRID_ID not in trial.system_attrs:
            continue
        if trial.state in (TrialState.WAITING, TrialState.RUNNING):
            return True
        latest[trial.system_attrs[_attrs.GRID_ID]] = trial  # Trials come in number order.
    orphans = [t for t in latest.values() if t.state == TrialState.FAIL]
    return any([requeue_cell(study, t, max_retries=max_retries) for t in orphans])


def _run_trial(
    study: optuna.Study,
    claimed: FrozenTrial,
    objective: Callable[[optuna.Trial], float],
    worker_id: str,
    host: str,
    max_retries: int,
    report: WorkerReport,
    inside: _Inside,
) -> None:
    storage, trial_id, number = study._storage, claimed._trial_id, claimed.number
    # The trial has suggested nothing yet: its cell comes from the grid.
    system = claimed.system_attrs
    cell = cell_key(cell_params(system[_attrs.SEARCH_SPACE], int(system[_attrs.GRID_ID])))
    try:
        call_reconnecting(
            lambda: _attrs.record_worker(storage, trial_id, worker_id, host),
            what=f"starting trial {number}",
        )
    except optuna.exceptions.UpdateFinishedTrialError:
        # The storage was out longer than the grace period: another worker's sweep failed the
        # claim as stale and re-queued its cell, which a later claim will train.
        report.discarded.append(number)
        _logger.warning(
            "worker %s: trial %d cell %s was failed as stale before it started; its cell is "
            "queued again",
            worker_id,
            number,
            cell,
        )
        return
    _logger.info("worker %s: trial %d cell %s started", worker_id, number, cell)
    with heartbeat(storage, trial_id):
        try:
            with inside:
                value = _check_value(objective(optuna.Trial(study, trial_id)))
            error = None
        except _Interrupted:
            error, details = INTERRUPTED, ""
        except Exception as raised:
            error, details = _one_line(raised), traceback.format_exc()
    if error is None:
        if _finish(storage, claimed, TrialState.COMPLETE, [value]):
            report.completed.append(number)
            _logger.info(
                "worker %s: trial %d cell %s complete, value %.6g", worker_id, number, cell, value
            )
        else:
            report.discarded.append(number)
            _logger.warning(
                "worker %s: trial %d cell %s finished after another worker failed it as stale; "
                "result discarded",
                worker_id,
                number,
                cell,
            )
        return
    call_reconnecting(
        lambda: _attrs.record_failure(storage, trial_id, error, details),
        what=f"recording the error of trial {number}",
    )
    _finish(storage, claimed, TrialState.FAIL, None)
    report.failed.append(number)
    _logger.warning("worker %s: trial %d cell %s failed: %s", worker_id, number, cell, error)
    if details:
        _logger.debug("worker %s: trial %d traceback:\n%s", worker_id, number, details.rstrip())
    failed = call_reconnecting(lambda: storage.get_trial(trial_id), what="re-reading a trial")
    # A no-op when a stale-trial sweep failed the trial first: the sweep re-queued the cell.
    call_reconnecting(
        lambda: requeue_cell(study, failed, max_retries=max_retries),
        what=f"re-queueing trial {number}",
    )


def _finish(
    storage: optuna.storages.BaseStorage,
    trial: FrozenTrial,
    state: TrialState,
    values: list[float] | None,
) -> bool:
    """Move our RUNNING trial to ``state``; False when it had been failed as stale."""

    def attempt() -> bool:
        try:
            return storage.set_trial_state_values(trial._trial_id, state, values)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Either a stale-trial sweep failed it, or our own earlier attempt did commit
            # before its connection broke: only the stored state tells which.
            return storage.get_trial(trial._trial_id).state == state

    return call_reconnecting(attempt, what=f"finishing trial {trial.number}")


def _check_value(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"the objective returned {value!r}; it must return a number")
    if not math.isfinite(value):
        raise ValueError(f"the objective returned {value}; it must return a finite number")
    return float(value)


def _one_line(error: BaseException) -> str:
    if isinstance(error, StorageError):  # ours: one line already, saying what was going on
        line = str(error)
    elif (lost := lost_connection(error)) is not None:
        # Optuna words every failed commit as "invalid data"; a lost server is no such thing.
        line = f"database connection lost: {lost}"
    else:
        text = " ".join(str(error).split()) or "(no message)"
        line = f"{type(error).__name__}: {text}"
    return line if len(line) <= _ERROR_CHARS else line[: _ERROR_CHARS - 3] + "..."


class _Inside:
    """Marks the span in which a signal may raise ``_Interrupted`` (only inside the objective,
    never in the middle of the worker's own bookkeeping)."""

    def __init__(self) -> None:
        self.active = False
        self.signalled = False

    def __enter__(self) -> None:
        self.active = True
        if self.signalled:
            raise _Interrupted

    def __exit__(self, *exc: object) -> None:
        self.active = False


_REDELIVER_S = 1.0


def _redeliver(inside: _Inside, signum: int) -> None:
    if inside.active:  # the objective still runs: the last raise was lost
        os.kill(os.getpid(), signum)


@contextmanager
def _signals_interrupt(stop: threading.Event) -> Iterator[_Inside]:
    """On the main thread, make SIGTERM and SIGINT stop the worker (interrupting the objective)."""
    inside = _Inside()
    if threading.current_thread() is not threading.main_thread():
        yield inside
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        if not inside.signalled:
            _logger.warning("received %s: stopping", signal.Signals(signum).name)
        stop.set()
        inside.signalled = True
        if inside.active:
            # A raise that lands in a finalizer or a gc callback (JAX has one) is printed and
            # dropped: until the objective has left, the signal comes again.
            threading.Timer(_REDELIVER_S, _redeliver, (inside, signum)).start()
            raise _Interrupted

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield inside
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
