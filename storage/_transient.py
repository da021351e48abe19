"""Riding out a database that goes away for a while (a PostgreSQL restart, a network blip).

Optuna turns every SQLAlchemy error inside a session into ``StorageInternalError``; only those
caused by a lost or refused connection are worth waiting for. The engine's ``pool_pre_ping``
then replaces the broken connections once the server is back.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy

from storage._errors import StorageUnreachable

_logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_OUTAGE_S = 300.0
_CONNECTION_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
)
_WRAPPERS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.PendingRollbackError)


def lost_connection(error: BaseException) -> str | None:
    """Why the database could not be reached, in one line, when that is what ``error`` means;
    None when it means something else (a bad query, a bug), which no waiting mends.

    The connection error may lie under wrappers: Optuna's ``StorageInternalError``, and the
    ``PendingRollbackError`` that Optuna's second try of a read on the broken session raises.
    """
    seen: BaseException | None = error
    while isinstance(seen, _WRAPPERS):
        seen = seen.__cause__ or seen.__context__
    if isinstance(seen, StorageUnreachable):
        return str(seen)
    if not isinstance(seen, _CONNECTION_ERRORS):
        return None
    driver = getattr(seen, "orig", None) or seen  # the DBAPI driver's own error, unwrapped
    lines = str(driver).strip().splitlines()
    return f"{type(driver).__name__}: {lines[0]}" if lines else type(driver).__name__


def call_reconnecting(fn: Callable[[], T], *, what: str, outage_s: float = DEFAULT_OUTAGE_S) -> T:
    """Call ``fn``, and call it again while the database is unreachable, for up to ``outage_s``.

    ``fn`` must be safe to repeat: a write whose commit was lost with the connection may or may
    not have happened.

    Raises:
        StorageUnreachable: the database stayed unreachable for ``outage_s`` seconds.
    """
    deadline = time.monotonic() + outage_s
    delay = 0.2
    while True:
        try:
            return fn()
        except (
            optuna.exceptions.StorageInternalError,
            *_CONNECTION_ERRORS,
            StorageUnreachable,
        ) as e:
            if lost_connection(e) is None:
                raise
            if time.monotonic() > deadline:
                raise StorageUnreachable(
                    f"the database stayed unreachable for {outage_s:.0f} s while {what}; "
                    "check that the server runs and the network reaches it"
                ) from e
            _logger.warning("database unreachable while %s; retrying in %.1f s", what, delay)
            time.sleep(delay + random.uniform(0, delay / 2))
            delay = min(delay * 2, 5.0)
