"""Storage URLs to Optuna ``RDBStorage`` objects, with the engine settings workers rely on.

SQLite: WAL journal, a busy timeout, and every transaction opened with ``BEGIN IMMEDIATE``.
pysqlite opens transactions lazily, so a claim's SELECT can read a trial as WAITING in two
processes before either writes it RUNNING; taking the write lock at BEGIN serialises those
SELECT-then-UPDATE steps, and with a busy timeout writers queue instead of failing with
"database is locked". The settings are engine events, which ``LrstudyStorage`` re-applies
when it rebuilds its engine after being pickled into a worker process.

PostgreSQL: psycopg 3, ``pool_pre_ping`` so that connections broken by a server restart are
replaced, and a connect timeout so that an unreachable server fails in seconds.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy import event

from storage._errors import StorageError, StorageUnreachable
from storage._filesystem import sqlite_path
from storage._url import ParsedURL, mask_url, parse_url

_SQLITE_BUSY_TIMEOUT_S = 120
_POSTGRES_CONNECT_TIMEOUT_S = 10
_CREATE_ATTEMPTS = 5


class LrstudyStorage(optuna.storages.RDBStorage):
    """``RDBStorage`` that keeps the SQLite transaction settings across pickling.

    The events go on after Optuna's own set-up: its schema check reads through two connections
    at once, which ``BEGIN IMMEDIATE`` would turn into a wait on itself. The pool is emptied so
    that every later connection passes through the events.
    """

    def __init__(self, url: str, *, shown_url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.shown_url = mask_url(shown_url)
        """The URL as the user wrote it, password masked, for messages."""
        self._apply_engine_events()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._apply_engine_events()

    def _apply_engine_events(self) -> None:
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
            self.engine.dispose()


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # Take over transaction control from pysqlite (the "begin" event below opens them).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL loses no committed transaction when a process crashes, only on power
    # loss, and saves an fsync per commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection: sqlalchemy.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_storage(
    url: str,
    *,
    heartbeat_s: int | None = None,
    grace_s: int | None = None,
    stale_trial_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    existing: bool = False,
) -> optuna.storages.RDBStorage:
    """Open the study database at ``url``, creating Optuna's tables on first use.

    Example:
        ``open_storage("sqlite:///lrstudy.db", heartbeat_s=30, grace_s=120)``

    Note:
        With ``heartbeat_s`` set, a RUNNING trial whose heartbeat is older than ``grace_s`` is
        failed by the next process that calls ``optuna.storages.fail_stale_trials``, which then
        calls ``stale_trial_callback`` (as Optuna's ``heartbeat_stale_trial_callback``). Safe to
        call from many processes at once, also on a fresh database.

    Args:
        url: ``sqlite:///PATH.db`` or ``postgresql://USER:PASSWORD@HOST:PORT/DBNAME``; query
            parameters such as ``sslmode`` pass through to the driver.
        heartbeat_s: Seconds between heartbeats of a running trial. Defaults to `None` (no
            heartbeat, so dead workers' trials are never failed).
        grace_s: Seconds without a heartbeat before a running trial counts as dead. Defaults to
            `None` (twice ``heartbeat_s``).
        stale_trial_callback: Called with the study and each trial failed as stale, e.g. to
            queue it again. Defaults to `None`.
        existing: Refuse an SQLite file that does not exist yet, instead of creating it: the
            commands that only read or join a study must not leave an empty database behind
            a mistyped path. Defaults to `False`.

    Raises:
        StorageError: one line, password masked, saying what to check.
    """
    parsed = parse_url(url)
    if existing and parsed.dialect == "sqlite":
        _check_sqlite_exists(url)
    _check_positive("heartbeat_s", heartbeat_s)
    _check_positive("grace_s", grace_s)
    if heartbeat_s is not None and grace_s is not None and grace_s <= heartbeat_s:
        raise StorageError(
            f"grace_s ({grace_s}) must be longer than heartbeat_s ({heartbeat_s}), or live "
            f"trials count as dead between two beats; use e.g. grace_s={4 * heartbeat_s}"
        )
    for attempt in range(1, _CREATE_ATTEMPTS + 1):
        try:
            return LrstudyStorage(
                parsed.sqlalchemy_url,
                shown_url=url,
                engine_kwargs=_engine_kwargs(parsed),
                heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
                heartbeat_stale_trial_callback=stale_trial_callback,
            )
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            # Processes opening a fresh database together race to create the tables; the
            # losers find them on the next attempt.
            if attempt < _CREATE_ATTEMPTS and _is_creation_race(e):
                time.sleep(random.uniform(0.05, 0.3))
                continue
            # No cause chained: the driver's error can quote the URL, password included.
            raise _storage_error(parsed, url, e) from None
        except RuntimeError as e:
            if "compatible" not in str(e):  # Optuna's "no longer compatible" schema message.
                raise
            raise _storage_error(parsed, url, e) from None  # may quote the URL, as above
    raise AssertionError("unreachable")


def _check_sqlite_exists(url: str) -> None:
    database = sqlite_path(url)
    if database is None or not Path(database).is_file():
        raise StorageError(
            f"storage URL {mask_url(url)!r} names no existing database file; check the path, "
            "or create the study first with `lrstudy create`"
        )


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise StorageError(f"{name} must be a positive whole number of seconds; got {value!r}")


def _engine_kwargs(parsed: ParsedURL) -> dict[str, Any]:
    if parsed.dialect == "sqlite":
        return {"connect_args": {"timeout": _SQLITE_BUSY_TIMEOUT_S}}
    query = sqlalchemy.engine.make_url(parsed.sqlalchemy_url).query
    connect_args = (
        {} if "connect_timeout" in query else {"connect_timeout": _POSTGRES_CONNECT_TIMEOUT_S}
    )
    return {"pool_pre_ping": True, "connect_args": connect_args}


def _is_creation_race(error: BaseException) -> bool:
    cause = error.__cause__ if isinstance(error, optuna.exceptions.StorageInternalError) else error
    if isinstance(cause, sqlalchemy.exc.IntegrityError):
        return True
    text = str(cause).lower()
    return any(key in text for key in ("already exists", "duplicate key", "database is locked"))


_HINTS = (
    ("password authentication failed", "check the user name and password"),
    ("no password supplied", "set PGPASSWORD or ~/.pgpass (keep it out of the URL)"),
    ("does not exist", "check the database and user names, or create the database (createdb)"),
    ("connection refused", "check that the server runs and that host and port are right"),
    ("timeout", "check that the server runs and that host and port are right"),
    ("could not translate host name", "check the host name"),
    ("unable to open database file", "check the path and its permissions"),
    ("not a database", "the file is not an SQLite database; check the path"),
    ("compatible", "run `optuna storage upgrade --storage URL` or upgrade optuna"),
)


# libpq's words for a server that did not answer, or not yet: the rest (a wrong password, a
# missing database, a bad host name) is the user's to fix, and waiting cannot help.
_UNREACHABLE = (
    "connection refused",
    "timeout expired",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "no route to host",
    "network is unreachable",
    "server closed the connection unexpectedly",
)


def _storage_error(parsed: ParsedURL, url: str, error: BaseException) -> StorageError:
    cause: BaseException = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    detail = lines[0] if lines else type(cause).__name__
    if parsed.password:
        detail = detail.replace(parsed.password, "***")
    hint = next((h for key, h in _HINTS if key in detail.lower()), "check the storage URL")
    unreachable = parsed.dialect == "postgresql" and any(
        key in detail.lower() for key in _UNREACHABLE
    )
    kind = StorageUnreachable if unreachable else StorageError
    return kind(f"cannot open storage {mask_url(url)!r}: {detail}; {hint}")
