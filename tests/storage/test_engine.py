"""open_storage on real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import pickle
import sqlite3
import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from storage import (
    LrstudyStorage,
    StorageError,
    StorageUnreachable,
    call_reconnecting,
    open_storage,
)
from tests.postgres import PostgresServer, cut_on_lock
from tests.waiting import closed_port


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
    with closed_port() as port:
        url = f"postgresql://ana:s3cret-pw@127.0.0.1:{port}/lr?connect_timeout=3"
        with pytest.raises(StorageError) as caught:
            open_storage(url)
    message = str(caught.value)
    assert isinstance(caught.value, StorageUnreachable)  # worth waiting for, in a worker
    assert "s3cret-pw" not in message
    assert "ana:***@127.0.0.1" in message
    assert "check that the server runs" in message
    assert "\n" not in message


def test_wrong_password_is_refused_and_masked(postgres_server: PostgresServer) -> None:
    with pytest.raises(StorageError) as caught:
        open_storage(postgres_server.url(password="wrong-s3cret"))
    message = str(caught.value)
    assert not isinstance(caught.value, StorageUnreachable)  # waiting cannot help
    assert "password authentication failed" in message
    assert "check the user name and password" in message
    assert "wrong-s3cret" not in message and postgres_server.password not in message


def test_missing_database_says_to_create_it(postgres_server: PostgresServer) -> None:
    with pytest.raises(StorageError, match=r"does not exist; .*createdb") as caught:
        open_storage(postgres_server.url("no_such_db"))
    assert not isinstance(caught.value, StorageUnreachable)


def test_opening_rides_out_a_server_that_is_down_until_it_is_back(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    postgres_server.stop()
    restart = threading.Timer(1.5, postgres_server.start)
    restart.start()
    try:
        storage = call_reconnecting(lambda: open_storage(url), what="opening", outage_s=60)
    finally:
        restart.join()
    assert storage.get_all_studies() == []


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


def test_a_read_cut_mid_query_is_retried_until_it_succeeds(postgres_storage_url: str) -> None:
    storage = open_storage(postgres_storage_url)
    study = optuna.create_study(storage=storage, study_name="s")
    study.add_trial(optuna.trial.create_trial(value=1.5))
    read: list[list[optuna.trial.FrozenTrial]] = []
    with cut_on_lock(postgres_storage_url, "trials") as cut:
        reader = threading.Thread(
            target=lambda: read.append(
                call_reconnecting(lambda: study.get_trials(), what="reading", outage_s=30)
            )
        )
        reader.start()
        # Optuna's read tries a second query on the broken session; the PendingRollbackError
        # that this raises is a lost connection too, so the worker waits instead of dying.
        cut()
        reader.join(60)
    assert [[t.value for t in trials] for trials in read] == [[1.5]]


def test_waiting_gives_up_on_a_server_that_stays_down_as_unreachable() -> None:
    with closed_port() as port:
        url = f"postgresql://ana:s3cret-pw@127.0.0.1:{port}/lr?connect_timeout=3"
        with pytest.raises(StorageUnreachable, match=r"stayed unreachable for 1 s while opening"):
            call_reconnecting(lambda: open_storage(url), what="opening", outage_s=1)
