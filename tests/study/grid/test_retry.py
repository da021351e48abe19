"""Re-queueing failed cells within the study's retry budget, on a real SQLite file."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from storage import open_storage
from study.grid import RetryStaleCell, create_grid_study, retries_used, retry_budget
from study.grid._attrs import record_worker

GRID = {"learning_rate": [0.1, 0.01], "seed": [0, 1]}


def _die_after_claiming(study: optuna.Study, grid_id: int, *, started: bool) -> None:
    """Claim the cell's waiting trial as a worker does, then go silent past the grace period
    (having recorded itself on the trial, as a started worker has, or not)."""
    storage = study._storage
    (trial_id,) = [
        t._trial_id
        for t in study.get_trials(states=(TrialState.WAITING,))
        if t.system_attrs["grid_id"] == grid_id
    ]
    storage.record_heartbeat(trial_id)
    assert storage.set_trial_state_values(trial_id, TrialState.RUNNING)
    if started:
        record_worker(storage, trial_id, "w", "host")
    time.sleep(3.2)  # No heartbeat for longer than the grace period: the worker "died".
    optuna.storages.fail_stale_trials(study)
    assert storage.get_trial(trial_id).state == TrialState.FAIL


def _stale_study(tmp_path: Path) -> tuple[optuna.Study, int]:
    # PostgreSQL goes through the same path in test_worker's SIGKILL test.
    storage = open_storage(
        f"sqlite:///{tmp_path / 's.db'}",
        heartbeat_s=1,
        grace_s=2,
        stale_trial_callback=RetryStaleCell(),
    )
    study = create_grid_study(storage, "s", GRID, max_retries=1)
    return study, study.trials[0].system_attrs["grid_id"]


def test_stale_trial_is_failed_and_its_cell_requeued_within_budget(tmp_path: Path) -> None:
    study, grid_id = _stale_study(tmp_path)
    for _ in range(2):
        _die_after_claiming(study, grid_id, started=True)
    trials = study.get_trials()
    same_cell = [t for t in trials if t.system_attrs["grid_id"] == grid_id]
    # Original + one retry, both failed; the budget (1) is spent, so no third trial.
    assert [t.state for t in same_cell] == [TrialState.FAIL, TrialState.FAIL]
    assert retries_used(same_cell[1]) == 1
    assert same_cell[1].system_attrs["retry_history"] == [same_cell[0].number]
    assert len(trials) == 4 + 1


def test_a_claim_that_never_started_spends_no_retry(tmp_path: Path) -> None:
    """A worker that died between its claim and its first write, or whose claim went through
    while the reply was lost, trained nothing: its cell is queued again for free."""
    study, grid_id = _stale_study(tmp_path)
    _die_after_claiming(study, grid_id, started=False)
    _die_after_claiming(study, grid_id, started=True)
    same_cell = [t for t in study.get_trials() if t.system_attrs["grid_id"] == grid_id]
    assert [t.state for t in same_cell] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert [retries_used(t) for t in same_cell] == [0, 0, 1]


def test_the_budget_is_stored_with_the_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    create_grid_study(url, "s", GRID, max_retries=5)
    # Read back by any process that opens the study, with no value passed around.
    assert retry_budget(optuna.load_study(study_name="s", storage=url)) == 5
