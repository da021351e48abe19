"""The one error type for input a user can fix (a path, a value, a flag)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input that the user can fix.

    The message is one line: what is wrong, the offending value, and what to do instead. The CLI
    prints it as is and exits with code 2; library callers catch it like any ``ValueError``.
    """
