"""A lock per study, shared by every process that can reach the storage, freed when one dies.

Creating a study's cells and re-queuing a failed cell are check-then-insert steps: two processes
that both see "cell 5 has no trial" would each add one. Optuna has no conditional insert, so
these steps run under this lock. PostgreSQL gives an advisory lock (all machines, released when
the connection drops); SQLite, which only one machine can share, gives a hidden lock file next to
the database (released by the OS when the process dies).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy
from filelock import FileLock
from optuna.storages import BaseStorage, RDBStorage

from storage._filesystem import sqlite_path

_U64 = 2**64 - 1
_LOCAL_LOCKS: dict[str, threading.Lock] = {}
_LOCAL_LOCKS_GUARD = threading.Lock()


def rdb_backend(storage: BaseStorage) -> RDBStorage | None:
    """The RDB storage behind ``storage`` (Optuna wraps it in a cache), or None for others."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


@contextmanager
def study_lock(storage: BaseStorage, study_name: str) -> Iterator[None]:
    """Hold the lock of study ``study_name`` in ``storage`` for the duration of the block."""
    backend = rdb_backend(storage)
    if backend is None:
        # In-memory storages live in one process: a thread lock is the whole story.
        with _LOCAL_LOCKS_GUARD:
            lock = _LOCAL_LOCKS.setdefault(study_name, threading.Lock())
        with lock:
            yield
        return
    url = backend.engine.url
    if url.get_backend_name() == "postgresql":
        with _advisory_lock(backend.engine, study_name):
            yield
        return
    # Through sqlite_path, the one parser: the URI form's "file:" is no part of the path.
    database = Path(sqlite_path(f"sqlite:///{url.database or ''}") or "lrstudy.db")
    with FileLock(database.with_name(f".{database.name}.{_key(study_name) & _U64:016x}.lock")):
        yield


@contextmanager
def _advisory_lock(engine: sqlalchemy.Engine, study_name: str) -> Iterator[None]:
    # A transaction-scoped advisory lock on a connection of its own: the locked block runs its
    # queries on other connections, and the lock goes away with this transaction or connection.
    with engine.connect() as connection, connection.begin():
        connection.execute(
            sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _key(study_name)}
        )
        yield


def _key(study_name: str) -> int:
    """A stable signed 64-bit number for the name (PostgreSQL advisory locks take a bigint)."""
    digest = hashlib.sha256(f"lrstudy:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
