"""One check per rule for config values; each raises ``ConfigError`` naming the config key."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from trainer._errors import ConfigError

Check = Callable[[str, Any], Any]
"""``check(key, value)`` returns the value (normalised) or raises ``ConfigError``."""


def integer(minimum: int) -> Check:
    def check(key: str, value: Any) -> int:
        # numbers.Integral: numpy's integers count, as they do for Python's own ranges.
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ConfigError(key, f"an integer >= {minimum}", value)
        return int(value)

    return check


def optional(inner: Check) -> Check:
    """``inner``, or None (the key is unset)."""

    def check(key: str, value: Any) -> Any:
        return None if value is None else inner(key, value)

    return check


def choice(choices: tuple[str, ...]) -> Check:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            allowed = ", ".join(f'"{c}"' for c in choices)
            raise ConfigError(key, f"one of {allowed}", value)
        return value

    return check


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, "true or false", value)
    return value


def string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, "a non-empty string", value)
    return value


def positive_number(key: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(key, "a number > 0", value)
    return float(value)


def ratios(key: str, value: Any) -> tuple[float, float, float]:
    example = "for example ratios = [0.7, 0.15, 0.15]"
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(key, "an array of 3 numbers (train, val, test)", value, example)
    numbers = tuple(positive_number(f"{key}[{i}]", v) for i, v in enumerate(value))
    if not math.isclose(sum(numbers), 1.0, abs_tol=1e-6):
        raise ConfigError(key, "3 numbers that sum to 1", value, example)
    return numbers  # type: ignore[return-value]
