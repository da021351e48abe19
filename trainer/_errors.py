"""The trainer's errors: input a user can fix, and one config value that breaks a rule."""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """Bad input that the user can fix.

    The message is one line: what is wrong, the offending value, and what to do instead. The CLI
    prints it as is and exits with code 2; library callers catch it like any ``ValueError``.
    """


class ConfigError(InputError):
    """A config value that breaks its rule, named by its config key (``image_size``).

    The layer that knows how the user set the value words it for them: the spec as
    ``train.image_size`` with ``--set``, ``lrstudy train`` as ``--image-size``.

    Args:
        key: The config field.
        rule: What the value must be, e.g. ``"an integer >= 75"``.
        value: The value given.
        fix: How to fix it, when more than "set another value" helps. Defaults to `None`.
    """

    def __init__(self, key: str, rule: str, value: Any, fix: str | None = None) -> None:
        self.key, self.rule, self.value, self.fix = key, rule, value, fix
        super().__init__(self.worded(key))

    def worded(self, name: str) -> str:
        """The message with the value named ``name`` (a spec key or a flag)."""
        text = f"{name} must be {self.rule}; got {short(self.value)}"
        return f"{text}; {self.fix}" if self.fix else text


def short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value, cut to ``limit`` characters for one-line messages."""
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
