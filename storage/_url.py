"""Storage URLs: the two forms lrstudy accepts, checked early and masked wherever printed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from storage._errors import StorageError
from storage._filesystem import sqlite_path

_FORMS = "sqlite:///PATH.db or postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
_POSTGRES_NAMES = ("postgresql", "postgres", "postgresql+psycopg")
_SQLITE_NAMES = ("sqlite", "sqlite+pysqlite")

# The password starts after the first ":" past the scheme ("scheme://user:", also when the
# slashes are wrong or the scheme missing) and may hold "/", "?", "#" or "@" (SQLAlchemy accepts
# them), so everything up to the last "@" is masked: masking too much is safe, too little is a
# leak. A password given as a query parameter (libpq's "password=" and "sslpassword=") is
# masked as well.
_USERINFO_PASSWORD = re.compile(r"(?s)^(\s*(?:[\w+.-]*:/+|(?![\w+.-]*:/))[^:]*:).*(@)")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]\w*password=)[^&#]*")


@dataclass(frozen=True)
class ParsedURL:
    """A storage URL ready for SQLAlchemy: the driver filled in, the database kind named."""

    sqlalchemy_url: str
    dialect: str  # "sqlite" or "postgresql"
    password: str | None


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``; never fails, even on garbage."""
    masked = _USERINFO_PASSWORD.sub(r"\1***\2", str(url))
    return _QUERY_PASSWORD.sub(r"\1***", masked)


def parse_url(url: str) -> ParsedURL:
    """Check a storage URL and pick the driver: psycopg 3 for PostgreSQL, pysqlite for SQLite.

    Raises:
        StorageError: the URL is malformed, names another database, or (SQLite) points into a
            folder that does not exist.
    """
    from sqlalchemy.engine import make_url  # Heavy: only when a storage is opened.
    from sqlalchemy.exc import ArgumentError

    text = str(url).strip()
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # No cause chained: SQLAlchemy's message quotes the URL, password included.
        raise StorageError(
            f"storage URL {mask_url(text)!r} is malformed (check the host and the port); "
            f"expected {_FORMS}"
        ) from None
    if parsed.drivername in _SQLITE_NAMES:
        return ParsedURL(_check_sqlite(text), "sqlite", None)
    if parsed.drivername in _POSTGRES_NAMES:
        if "@" in (parsed.host or ""):
            # The password ends at its first "@": the rest of it would be the host, and quoted.
            raise StorageError(
                f"storage URL {mask_url(text)!r} holds '@' more than once; write an '@' of the "
                "user name or password as %40"
            )
        if not parsed.database:
            raise StorageError(
                f"storage URL {mask_url(text)!r} names no database; "
                "append /DBNAME, e.g. postgresql://USER:PASSWORD@HOST:5432/lrstudy"
            )
        normalised = parsed.set(drivername="postgresql+psycopg")
        return ParsedURL(
            normalised.render_as_string(hide_password=False), "postgresql", parsed.password
        )
    raise StorageError(
        f"storage URL {mask_url(text)!r} uses {parsed.drivername!r}, which lrstudy does not "
        f"support; expected {_FORMS}"
    )


def _check_sqlite(text: str) -> str:
    database = sqlite_path(text)
    if database is None:
        raise StorageError(
            f"storage URL {text!r} names no database file, and workers cannot share an "
            "in-memory database; use sqlite:///PATH.db"
        )
    folder = Path(database).parent
    if not folder.is_dir():
        raise StorageError(
            f"folder {str(folder)!r} of the SQLite database in storage URL {text!r} does not "
            "exist; create it first or fix the path"
        )
    return text
