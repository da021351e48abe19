"""Re-queueing a failed grid cell: one new WAITING trial, never two, within the retry budget.

A cell is the set of trials sharing the system attribute ``grid_id``. Whoever fails a trial (the
worker whose objective raised or was interrupted, or the process that found the trial's
heartbeat stale) re-queues its cell; a worker that finds a cell failed with budget left and
nothing queued (its failer died in between) does too. The check "nothing queued, running or
complete for this cell" and the insert run under the study lock, so those actors can race safely.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from storage import rdb_backend, study_lock
from study.grid import _attrs
from study.grid._attrs import INTERRUPTED, retries_used, retry_budget

if TYPE_CHECKING:
    from optuna import Study

_logger = logging.getLogger(__name__)

_ALIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)


def requeue_cell(study: Study, failed: FrozenTrial, *, max_retries: int) -> bool:
    """Add a WAITING copy of the failed ``failed`` trial unless its cell is done or queued.

    A failure spends one retry unless the trial was interrupted or never started (no worker
    recorded itself on the claim: it died right after claiming, or its claim's commit went
    through while the reply was lost, so it claimed another cell); a cell that has spent
    ``max_retries`` stays failed (until ``lrstudy retry`` gives it a fresh budget).

    Returns:
        True when this call queued the retry.
    """
    if _attrs.GRID_ID not in failed.system_attrs or failed.state != TrialState.FAIL:
        return False
    started = _attrs.WORKER_ID in failed.user_attrs
    spent = started and failed.user_attrs.get(_attrs.ERROR) != INTERRUPTED
    used = retries_used(failed) + int(spent)
    if used > max_retries:
        _logger.warning(
            "trial %d %s failed for good after %d retries", failed.number, failed.params, used - 1
        )
        return False
    with study_lock(study._storage, study.study_name):
        number = queue_again(study, failed._trial_id, used=used)
    if number is None:
        return False
    _logger.info(
        "trial %d %s re-queued as trial %d (retry %d of %d%s)",
        failed.number,
        failed.params,
        number,
        used,
        max_retries,
        "" if spent else f", {'interrupted' if started else 'never started'}: not counted",
    )
    return True


def queue_again(study: Study, trial_id: int, *, used: int) -> int | None:
    """Add a WAITING copy of the failed trial ``trial_id`` if it is the last of its cell and
    nothing of its cell is waiting, running or complete; the caller holds the study lock.

    The copy keeps ``grid_id``, ``search_space`` and the params, so the grid sampler serves it
    the same cell, and records the lineage Optuna's own ``RetryHeartbeatStaleTrialCallback``
    records (``failed_trial``, ``retry_history``), with ``used`` as its ``retries_used``.

    Returns:
        The new trial's number, or None when the cell needs no copy.
    """
    storage = study._storage
    # Read now, under the lock, and past Optuna's cache of finished trials: `lrstudy extend`
    # may have renumbered them since they were read.
    backend = rdb_backend(storage) or storage
    failed = backend.get_trial(trial_id)
    grid_id = failed.system_attrs.get(_attrs.GRID_ID)
    cell = [
        t
        for t in backend.get_all_trials(study._study_id, deepcopy=False)
        if t.system_attrs.get(_attrs.GRID_ID) == grid_id
    ]
    # Only the cell's latest trial may be re-queued, and only while nothing else is pending:
    # this is what makes a second actor (or a second call) a no-op.
    if any(t.state in _ALIVE for t in cell) or max(t.number for t in cell) != failed.number:
        return None
    history = [*failed.system_attrs.get(_attrs.RETRY_HISTORY, []), failed.number]
    template = optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=failed.params,
        distributions=failed.distributions,
        system_attrs={
            **{
                key: value
                for key, value in failed.system_attrs.items()
                if key != _attrs.TRACEBACK  # the failed try's, kept on that try
            },
            _attrs.FAILED_TRIAL: history[0],
            _attrs.RETRY_HISTORY: history,
            _attrs.RETRIES_USED: used,
        },
    )
    new_id = storage.create_new_trial(study._study_id, template_trial=template)
    return storage.get_trial(new_id).number


class RetryStaleCell:
    """Heartbeat-stale callback for ``RDBStorage``: re-queue the cell of a trial whose worker died.

    Unlike Optuna's ``RetryHeartbeatStaleTrialCallback`` it drops the dead attempt's user
    attributes (partial metrics, worker id) and shares the study's retry budget with failures
    of the objective, so the budget bounds every kind of failure of a cell.
    """

    def __call__(self, study: Study, trial: FrozenTrial) -> None:
        _logger.warning(
            "trial %d %s lost its worker (no heartbeat within the grace period)",
            trial.number,
            trial.params,
        )
        requeue_cell(study, trial, max_retries=retry_budget(study))
