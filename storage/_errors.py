"""Storage failures, converted in one place so that no URL password leaks into a message."""

from __future__ import annotations


class StorageError(RuntimeError):
    """A storage URL that cannot be used: malformed, unreachable, or refused.

    The message is one line with any password masked, and says what to check.
    """


class StorageUnreachable(StorageError):
    """The database server did not answer (refused, timed out, starting up or shutting down):
    worth waiting for, unlike a wrong password or a missing database."""
