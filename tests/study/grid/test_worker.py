"""Workers in real processes on real databases: every cell once, through crashes and signals."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import pytest
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from storage import call_reconnecting, open_storage
from study.grid import (
    INTERRUPTED,
    RetryStaleCell,
    cell_states,
    create_grid_study,
    load_grid_study,
    read_trial,
    retries_used,
    run_worker,
)
from study.spec import cell_key
from tests.postgres import PostgresServer
from tests.waiting import wait_for
from trainer import InputError

GRID = {"learning_rate": [0.1, 0.01, 0.001, 0.0001], "seed": [0, 1, 2]}
CELLS = [
    cell_key({"learning_rate": lr, "seed": s}) for lr in GRID["learning_rate"] for s in (0, 1, 2)
]
SLOW_CELL = "learning_rate=0.01__seed=1"
# Child processes fork from a server that has the heavy modules loaded, not from this process
# (whose open database connections they must not share): each starts in a fraction of a second.
_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["optuna", "storage", "study.grid", __name__])


@dataclass
class _Objective:
    """Near-zero work; logs each call to ``calls/<cell>``; can hang on or break one cell."""

    calls: Path
    sleep_s: float = 0.0
    hang_cell: str | None = None  # The first attempt at this cell blocks until killed.
    broken_cell: str | None = None  # Every attempt at this cell raises.

    def __call__(self, trial: optuna.Trial) -> float:
        params = {
            "learning_rate": trial.suggest_float("learning_rate", 1e-5, 1.0, log=True),
            "seed": trial.suggest_int("seed", 0, 2),
        }
        key = cell_key(params)
        with open(self.calls / key, "a") as log:
            log.write(f"{os.getpid()}\n")
        if key == self.hang_cell and _first(self.calls / "hung"):
            time.sleep(600)
        if key == self.broken_cell:
            raise RuntimeError(f"cell {key} is broken\nsee the log")
        time.sleep(self.sleep_s)
        return params["learning_rate"] + params["seed"]

    def count(self, key: str) -> int:
        path = self.calls / key
        return len(path.read_text().splitlines()) if path.exists() else 0


def _first(marker: Path) -> bool:
    try:
        marker.write_text(str(os.getpid())) if not marker.exists() else None
        return marker.read_text() == str(os.getpid())
    except OSError:
        return False


def _work(storage: BaseStorage, worker_id: str, objective: _Objective, poll_s: float) -> None:
    report = run_worker(
        load_grid_study(storage, "lr"), objective, worker_id=worker_id, poll_s=poll_s
    )
    (objective.calls / f"report-{worker_id}.json").write_text(json.dumps(asdict(report)))


def _start(storage: BaseStorage, objective: _Objective, worker_id: str) -> multiprocessing.Process:
    # The storage object itself travels to the child (pickled), as a launcher would pass it.
    process = _CTX.Process(target=_work, args=(storage, worker_id, objective, 0.2))
    process.start()
    return process


def _complete_once(storage: BaseStorage) -> list[optuna.trial.FrozenTrial]:
    """Assert one COMPLETE trial per cell; return all trials."""
    trials = optuna.load_study(study_name="lr", storage=storage).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(cell_key(t.params) for t in complete) == sorted(CELLS)
    return trials


@pytest.mark.parametrize(
    ("storage_url", "workers"),
    [("sqlite", 1), ("sqlite", 4), ("sqlite", 12), ("postgresql", 1), ("postgresql", 4)],
    indirect=["storage_url"],
)
def test_n_worker_processes_run_every_cell_exactly_once(
    storage_url: str, workers: int, tmp_path: Path
) -> None:
    storage = open_storage(
        storage_url, heartbeat_s=1, grace_s=5, stale_trial_callback=RetryStaleCell()
    )
    create_grid_study(storage, "lr", GRID)
    objective = _Objective(tmp_path)
    processes = [_start(storage, objective, f"w{i}") for i in range(workers)]
    for process in processes:
        process.join(120)
    assert [p.exitcode for p in processes] == [0] * workers
    trials = _complete_once(storage)
    assert len(trials) == 12, "surplus trials"
    assert [objective.count(cell) for cell in CELLS] == [1] * 12
    reports = [json.loads((tmp_path / f"report-w{i}.json").read_text()) for i in range(workers)]
    assert sum(len(r["completed"]) for r in reports) == 12
    assert {t.user_attrs["worker_id"] for t in trials} <= {f"w{i}" for i in range(workers)}
    assert {t.user_attrs["host"] for t in trials} == {socket.gethostname()}


def test_sigkilled_worker_trial_fails_after_grace_and_runs_again_elsewhere(
    storage_url: str, tmp_path: Path
) -> None:
    storage = open_storage(
        storage_url, heartbeat_s=1, grace_s=3, stale_trial_callback=RetryStaleCell()
    )
    create_grid_study(storage, "lr", GRID)
    objective = _Objective(tmp_path, hang_cell=SLOW_CELL)
    doomed = _start(storage, objective, "doomed")
    wait_for(lambda: (tmp_path / "hung").exists())
    os.kill(doomed.pid, signal.SIGKILL)  # type: ignore[arg-type]
    doomed.join(10)
    survivor = _start(storage, objective, "survivor")
    survivor.join(120)
    assert survivor.exitcode == 0
    trials = _complete_once(storage)
    assert len(trials) == 13
    (lost,) = [t for t in trials if t.state == TrialState.FAIL]
    assert cell_key(lost.params) == SLOW_CELL and lost.user_attrs["worker_id"] == "doomed"
    (retry,) = [t for t in trials if t.system_attrs.get("retry_history")]
    assert retry.system_attrs["retry_history"] == [lost.number] and retries_used(retry) == 1
    assert (retry.state, retry.user_attrs["worker_id"]) == (TrialState.COMPLETE, "survivor")
    assert objective.count(SLOW_CELL) == 2
    lost_state = [s for s in cell_states(load_grid_study(storage, "lr")) if s.key == SLOW_CELL]
    assert lost_state[0].state == "complete"


def test_sigterm_fails_the_trial_at_once_requeues_it_and_exits_zero(tmp_path: Path) -> None:
    storage = open_storage(
        f"sqlite:///{tmp_path / 's.db'}",
        heartbeat_s=1,
        grace_s=3,
        stale_trial_callback=RetryStaleCell(),
    )
    create_grid_study(storage, "lr", GRID)
    objective = _Objective(tmp_path, hang_cell=SLOW_CELL)
    worker = _start(storage, objective, "w")
    wait_for(lambda: (tmp_path / "hung").exists())
    started = time.monotonic()
    worker.terminate()  # SIGTERM
    worker.join(30)
    assert worker.exitcode == 0
    assert time.monotonic() - started < 10  # at once, not after the grace period
    assert json.loads((tmp_path / "report-w.json").read_text())["interrupted"] is True
    trials = optuna.load_study(study_name="lr", storage=storage).get_trials()
    (stopped,) = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped.user_attrs["error"] == INTERRUPTED and cell_key(stopped.params) == SLOW_CELL
    (requeued,) = [t for t in trials if t.system_attrs.get("retry_history") == [stopped.number]]
    assert requeued.state == TrialState.WAITING and retries_used(requeued) == 0
    run_worker(load_grid_study(storage, "lr"), objective, worker_id="again", poll_s=0.1)
    assert len(_complete_once(storage)) == 14 - 1


def test_sigterm_while_waiting_for_other_workers_exits_zero_at_once(tmp_path: Path) -> None:
    storage = open_storage(
        f"sqlite:///{tmp_path / 's.db'}", heartbeat_s=60, stale_trial_callback=RetryStaleCell()
    )
    study = create_grid_study(storage, "lr", GRID)
    elsewhere = study.get_trials()[0]._trial_id  # held by a live worker on another machine
    storage.record_heartbeat(elsewhere)
    assert storage.set_trial_state_values(elsewhere, TrialState.RUNNING)
    worker = _CTX.Process(target=_work, args=(storage, "w", _Objective(tmp_path), 60.0))
    worker.start()
    wait_for(
        lambda: (
            (tmp_path / "report-w.json").exists()
            or sum(_Objective(tmp_path).count(cell) for cell in CELLS) == 11
        )
    )
    time.sleep(0.5)  # now polling, for up to 60 s
    started = time.monotonic()
    worker.terminate()
    worker.join(30)
    assert worker.exitcode == 0 and time.monotonic() - started < 10
    assert json.loads((tmp_path / "report-w.json").read_text())["interrupted"] is True
    assert storage.get_trial(elsewhere).state == TrialState.RUNNING


def test_raising_objective_is_retried_then_failed_for_good(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    create_grid_study(storage, "lr", GRID, max_retries=2)
    objective = _Objective(tmp_path, broken_cell=SLOW_CELL)
    report = run_worker(load_grid_study(storage, "lr"), objective, worker_id="w", poll_s=0.1)
    assert len(report.completed) == 11 and len(report.failed) == 3
    assert objective.count(SLOW_CELL) == 3
    states = {s.key: s for s in cell_states(load_grid_study(storage, "lr"))}
    broken = states.pop(SLOW_CELL)
    assert (broken.state, broken.retries) == ("failed", 2)
    assert broken.error == f"RuntimeError: cell {SLOW_CELL} is broken see the log"
    assert {s.state for s in states.values()} == {"complete"}
    trials = optuna.load_study(study_name="lr", storage=storage).get_trials()
    assert len(trials) == 14
    # The table shows one line; the whole traceback is kept for whoever debugs the cell.
    failed = [read_trial(t) for t in trials if t.state == TrialState.FAIL]
    assert all(r.traceback and r.traceback.startswith("Traceback (most recent") for r in failed)
    assert all(
        f"RuntimeError: cell {SLOW_CELL} is broken\nsee the log" in r.traceback for r in failed
    )


def test_a_failed_trial_s_traceback_is_logged_at_debug_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    create_grid_study(storage, "lr", {"learning_rate": [0.1], "seed": [0]}, max_retries=0)
    objective = _Objective(tmp_path, broken_cell="learning_rate=0.1__seed=0")
    with caplog.at_level("DEBUG", logger="study.grid"):
        run_worker(load_grid_study(storage, "lr"), objective, worker_id="w", poll_s=0.1)
    debug = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"]
    assert any("trial 0 traceback:\nTraceback (most recent call last)" in m for m in debug)


def test_a_claim_failed_as_stale_before_it_starts_is_let_go(tmp_path: Path) -> None:
    """A storage outage past the grace period lets another worker's sweep fail the claim
    before this worker records itself on it: the worker lets the trial go, trains nothing
    and goes on, where it used to die on Optuna's UpdateFinishedTrialError."""
    from study.grid._worker import WorkerReport, _Claimer, _Inside, _run_trial

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    create_grid_study(storage, "lr", {"learning_rate": [0.1], "seed": [0]})
    study = load_grid_study(storage, "lr")
    claimed = _Claimer(study).claim()
    assert claimed is not None
    storage.set_trial_state_values(claimed._trial_id, TrialState.FAIL)  # the sweep's doing
    report = WorkerReport("w")
    objective = _Objective(tmp_path)
    _run_trial(study, claimed, objective, "w", "host", 2, report, _Inside())
    assert (report.discarded, report.completed, report.failed) == ([claimed.number], [], [])
    assert objective.count("learning_rate=0.1__seed=0") == 0


class _Swallower:
    """Sends SIGTERM from its finalizer and runs on there: the handler's raise then lands in
    the finalizer, where Python prints it and drops it (as in JAX's gc callback)."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100_000):
            pass


def test_a_sigterm_whose_raise_a_finalizer_swallows_still_interrupts(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    create_grid_study(storage, "lr", {"learning_rate": [0.1], "seed": [0]}, max_retries=0)
    finished: list[bool] = []

    def objective(trial: optuna.Trial) -> float:
        _Swallower()  # dropped at once: its finalizer runs now
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.01)
        finished.append(True)
        return 1.0

    report = run_worker(load_grid_study(storage, "lr"), objective, worker_id="w", poll_s=0.1)
    assert report.interrupted and finished == []
    tried, queued = optuna.load_study(study_name="lr", storage=storage).get_trials()
    assert tried.state == TrialState.FAIL and read_trial(tried).error == INTERRUPTED
    assert queued.state == TrialState.WAITING  # back in the queue, as after any SIGTERM


def test_stop_event_ends_the_worker_after_the_running_trial(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    create_grid_study(storage, "lr", GRID)
    stop = threading.Event()
    objective = _Objective(tmp_path)

    def objective_then_stop(trial: optuna.Trial) -> float:
        stop.set()
        return objective(trial)

    report = run_worker(
        load_grid_study(storage, "lr"), objective_then_stop, worker_id="w", stop=stop
    )
    assert (len(report.completed), report.interrupted) == (1, True)
    states = sorted(s.state for s in cell_states(load_grid_study(storage, "lr")))
    assert states == ["complete"] + ["waiting"] * 11


def test_a_study_without_its_grid_sampler_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    create_grid_study(url, "lr", GRID)
    with pytest.raises(InputError, match="load it with load_grid_study"):
        run_worker(optuna.load_study(study_name="lr", storage=url), float, worker_id="w")


def test_workers_ride_out_a_postgresql_restart(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    storage = open_storage(url, heartbeat_s=1, grace_s=30, stale_trial_callback=RetryStaleCell())
    create_grid_study(storage, "lr", GRID)
    objective = _Objective(tmp_path, sleep_s=0.3)
    processes = [_start(storage, objective, f"w{i}") for i in range(2)]
    wait_for(lambda: sum(objective.count(cell) for cell in CELLS) >= 4)
    postgres_server.stop()
    time.sleep(2)
    postgres_server.start()
    for process in processes:
        process.join(120)
    assert [p.exitcode for p in processes] == [0, 0]
    trials = call_reconnecting(lambda: _complete_once(storage), what="checking")
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
