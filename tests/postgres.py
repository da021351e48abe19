"""Pytest plugin: a real, throwaway PostgreSQL server for the storage tests.

Registered with ``-p tests.postgres``. The session starts one server on 127.0.0.1 on a free port
in a temporary folder (as the ``postgres`` user when running as root, since PostgreSQL refuses
root) with password authentication and a random password, and each test gets a fresh database.
Without server binaries the PostgreSQL tests skip, except under ``CI=true``, where they fail.
``PostgresServer`` also serves ``benchmarks/orchestration.py``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.waiting import free_port, wait_for

_SEARCH = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")
_USER = "postgres"


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: PostgreSQL 15 first, then any, then PATH."""
    for pattern in _SEARCH:
        for folder in sorted(Path("/").glob(pattern.lstrip("/")), reverse=True):
            if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
                return folder
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def missing_reason() -> str | None:
    """Why no server can be started here, or None when one can."""
    if find_bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql-15"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_USER)
        except KeyError:
            return "running as root, and there is no 'postgres' user to run the server as"
    return None


class PostgresServer:
    """One PostgreSQL server in a temporary folder, listening on 127.0.0.1 only.

    Args:
        durable: Keep fsync and synchronous commit on, as a production server would. Defaults
            to `False` (tests need no durability and run faster without it).
    """

    def __init__(self, *, durable: bool = False) -> None:
        bindir = find_bindir()
        reason = missing_reason()
        if bindir is None or reason is not None:
            raise RuntimeError(reason)
        self._bindir = bindir
        self._as_user = ["runuser", "-u", _USER, "--"] if os.geteuid() == 0 else []
        self.folder = Path(tempfile.mkdtemp(prefix="lrstudy-pg-"))
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self._durable = durable
        (self.folder / "pwfile").write_text(self.password + "\n")
        if self._as_user:
            account = pwd.getpwnam(_USER)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            os.chown(self.folder / "pwfile", account.pw_uid, account.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.folder / "data"),
            "-U",
            _USER,
            "-E",
            "UTF8",
            "--auth=scram-sha-256",
            f"--pwfile={self.folder / 'pwfile'}",
            "--no-sync",
        )
        (self.folder / "pwfile").unlink()
        self._start_on_a_free_port()

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """The storage URL of ``database`` (with another ``password`` to test refusals)."""
        secret = self.password if password is None else password
        return f"postgresql://{_USER}:{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """Create an empty database and return its storage URL."""
        name = f"test_{secrets.token_hex(6)}"
        with psycopg.connect(self._conninfo(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        if not self._durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.folder / "data"),
            "-l",
            str(self.folder / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def _start_on_a_free_port(self, tries: int = 3) -> None:
        """Start, on a fresh port each time another process took the probed one first."""
        for _ in range(tries - 1):
            try:
                self.start()
                return
            except RuntimeError as error:
                if "already in use" not in str(error):
                    raise
                self.port = free_port()
        self.start()

    def stop(self) -> None:
        """Stop at once, cutting every client connection, as a crash or a failover would."""
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        """Stop the server and delete its folder."""
        subprocess.run(
            [
                *self._as_user,
                str(self._bindir / "pg_ctl"),
                "-D",
                str(self.folder / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.folder, ignore_errors=True)

    def _conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={_USER} password={self.password}"

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [*self._as_user, str(self._bindir / program), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.folder,
        )
        if result.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed: {result.stderr.strip()}\n{tail}")


@contextlib.contextmanager
def cut_on_lock(url: str, table: str) -> Iterator[Callable[[], None]]:
    """Hold ``table`` locked, and yield ``cut``: it waits until a query stops on the lock, ends
    that query's connection as a failover would, and releases the lock.

    So the connection is lost in the middle of a command every time, with no race on when.
    """
    with psycopg.connect(url) as locker, psycopg.connect(url, autocommit=True) as watcher:
        locker.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        waiting: list[int] = []

        def a_query_waits() -> bool:
            # From another connection: pg_stat_activity is read once per transaction.
            waiting[:] = [
                row[0]
                for row in watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE %s",
                    (f"%{table}%",),
                )
            ]
            return bool(waiting)

        def cut() -> None:
            wait_for(a_query_waits, timeout_s=60, what=f"a query to wait on the {table} lock")
            watcher.execute("SELECT pg_terminate_backend(%s)", (waiting[0],))
            locker.rollback()

        yield cut


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (tests may stop and start it, and must leave it up)."""
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests must not be skipped)")
        pytest.skip(reason)
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """Storage URL of the server's maintenance database ``postgres``."""
    return postgres_server.url()


@pytest.fixture
def postgres_storage_url(postgres_server: PostgresServer) -> str:
    """Storage URL of a fresh, empty database for this test."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty study database, once as an SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return str(request.getfixturevalue("postgres_storage_url"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the server, so that ``-m 'not postgres'`` leaves them out."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("storage_url") == "postgresql"
        if on_postgres or "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
