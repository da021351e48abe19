"""The study service: spec, exactly-once grid scheduling, workers, launcher, export, CLI.

The public names load their modules on first use: the CLI imports this package on every call,
and ``lrstudy --help`` must not pay for importing Optuna or Keras.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CellObjective": "study._objective",
    "CellState": "study._grid",
    "StudySpec": "study._spec",
    "WorkerReport": "study._worker",
    "cell_key": "study._grid",
    "cell_params": "study._grid",
    "cell_states": "study._grid",
    "collect": "study._export",
    "compare": "study._stats",
    "create_grid_study": "study._grid",
    "load_grid_study": "study._grid",
    "load_preset": "study._spec",
    "load_spec": "study._spec",
    "refresh_views": "study._dashboard",
    "render": "study._export",
    "run_worker": "study._worker",
    "summarize": "study._stats",
    "write_export": "study._export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
