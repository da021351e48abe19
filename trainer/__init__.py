"""Data, model, training and metrics for one grid cell; knows nothing of Optuna."""

from trainer._errors import InputError

__all__ = [
    "InputError",
]
