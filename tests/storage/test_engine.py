"""open_storage on real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import pickle
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from storage import LrstudyStorage, StorageError, call_reconnecting, open_storage, retries_used
from study._grid import create_grid_study
from tests.postgres import PostgresServer

GRID = {"learning_rate": [0.1, 0.01], "seed": [0, 1]}


def test_a_study_written_through_one_storage_is_read_through_another(storage_url: str) -> None:
    first = open_storage(storage_url)
    optuna.create_study(storage=first, study_name="s").add_trial(
        optuna.trial.create_trial(value=1.5)
    )
    second = open_storage(storage_url)
    study = optuna.load_study(study_name="s", storage=second)
    assert [t.value for t in study.trials] == [1.5]
    assert isinstance(second, LrstudyStorage)


def test_pickled_sqlite_storage_still_takes_the_write_lock_at_begin(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    storage = pickle.loads(pickle.dumps(open_storage(f"sqlite:///{path}")))
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        # A read alone must hold the write lock, or two claims could both read WAITING.
        connection.exec_driver_sql("SELECT count(*) FROM trials").scalar()
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        connection.rollback()
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        other.close()


def test_unreachable_server_is_one_masked_line() -> None:
    with PostgresServer.closed_port() as port:
        url = f"postgresql://ana:s3cret-pw@127.0.0.1:{port}/lr?connect_timeout=3"
        with pytest.raises(StorageError) as caught:
            open_storage(url)
    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert "ana:***@127.0.0.1" in message
    assert "check that the server runs" in message
    assert "\n" not in message


def test_wrong_password_is_refused_and_masked(postgres_server: PostgresServer) -> None:
    with pytest.raises(StorageError) as caught:
        open_storage(postgres_server.url(password="wrong-s3cret"))
    message = str(caught.value)
    assert "password authentication failed" in message
    assert "check the user name and password" in message
    assert "wrong-s3cret" not in message and postgres_server.password not in message


def test_missing_database_says_to_create_it(postgres_server: PostgresServer) -> None:
    with pytest.raises(StorageError, match=r"does not exist; .*createdb"):
        open_storage(postgres_server.url("no_such_db"))


def test_stale_trial_is_failed_and_its_cell_requeued_within_budget(tmp_path: Path) -> None:
    # PostgreSQL goes through the same path in test_worker's SIGKILL test.
    storage = open_storage(
        f"sqlite:///{tmp_path / 's.db'}", heartbeat_s=1, grace_s=2, max_retries=1
    )
    study = create_grid_study(storage, "s", GRID)
    grid_id = study.trials[0].system_attrs["grid_id"]
    for _ in range(2):
        (trial_id,) = [
            t._trial_id
            for t in study.get_trials(states=(TrialState.WAITING,))
            if t.system_attrs["grid_id"] == grid_id
        ]
        storage.record_heartbeat(trial_id)
        assert storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        time.sleep(3.2)  # No heartbeat for longer than the grace period: the worker "died".
        optuna.storages.fail_stale_trials(study)
        assert storage.get_trial(trial_id).state == TrialState.FAIL
    trials = study.get_trials()
    same_cell = [t for t in trials if t.system_attrs["grid_id"] == grid_id]
    # Original + one retry, both failed; the budget (1) is spent, so no third trial.
    assert [t.state for t in same_cell] == [TrialState.FAIL, TrialState.FAIL]
    assert retries_used(same_cell[1]) == 1
    assert same_cell[1].system_attrs["retry_history"] == [same_cell[0].number]
    assert len(trials) == 4 + 1


def test_connections_survive_a_server_restart(postgres_server: PostgresServer) -> None:
    storage = open_storage(postgres_server.create_database())
    optuna.create_study(storage=storage, study_name="s")
    postgres_server.stop()
    with pytest.raises((optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError)):
        storage.get_all_studies()
    postgres_server.start()
    # pool_pre_ping replaces the connections the restart broke; no retry loop is needed.
    assert [s.study_name for s in storage.get_all_studies()] == ["s"]
    assert call_reconnecting(lambda: len(storage.get_all_studies()), what="test") == 1
