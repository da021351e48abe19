"""Storage URLs to Optuna storages: engine settings, locks, reconnects; no grid semantics.

``StorageError`` and ``mask_url`` load at once (the CLI needs them for every command); the rest
loads Optuna and SQLAlchemy on first use, so that ``lrstudy --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from storage._errors import StorageError, StorageUnreachable
from storage._filesystem import check_sqlite_local
from storage._url import mask_url

if TYPE_CHECKING:
    from storage._engine import LrstudyStorage, open_storage
    from storage._lock import rdb_backend, study_lock
    from storage._rewrite import rewrite_study
    from storage._transient import call_reconnecting, lost_connection

_LAZY = {
    "LrstudyStorage": "storage._engine",
    "open_storage": "storage._engine",
    "study_lock": "storage._lock",
    "rdb_backend": "storage._lock",
    "rewrite_study": "storage._rewrite",
    "call_reconnecting": "storage._transient",
    "lost_connection": "storage._transient",
}

__all__ = [
    "LrstudyStorage",
    "StorageError",
    "StorageUnreachable",
    "call_reconnecting",
    "check_sqlite_local",
    "lost_connection",
    "mask_url",
    "open_storage",
    "rdb_backend",
    "rewrite_study",
    "study_lock",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
