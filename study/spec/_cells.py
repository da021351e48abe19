"""From a spec to the trainer: each grid cell's name and its plain ``CellConfig``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from study.spec._spec import StudySpec
from trainer._config import CellConfig, train_keys
from trainer._errors import ConfigError, InputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def cell_key(params: Mapping[str, object]) -> str:
    """A stable, filesystem-safe name of a cell, e.g. ``learning_rate=0.001__seed=2``.

    Axes are sorted by name, so the key does not depend on the order of ``params``.
    """
    parts = []
    for name, value in sorted(params.items()):
        text = repr(value) if isinstance(value, float) else str(value)
        parts.append(f"{_UNSAFE.sub('-', str(name))}={_UNSAFE.sub('-', text)}")
    return "__".join(parts)


def cell_config(
    spec: StudySpec, params: Mapping[str, Any], *, folder: str | Path | None = None
) -> CellConfig:
    """The trainer config of one grid cell; grid axes override ``[train]`` keys.

    Its ``out_dir`` is ``<folder>/<cell key>``, the same on every worker, so a cell retried
    anywhere that shares the artifacts folder resumes from its last checkpoint.

    Args:
        spec: The study spec.
        params: The cell's value of each grid axis.
        folder: The study's folder (the grid room's ``study_folder``, named by the study's id,
            which the spec does not know). Defaults to ``<artifacts>/<study name>``, the folder
            of a study made before studies had an id.

    Raises:
        InputError: the cell's values break a rule of the trainer, worded with the spec key.
    """
    if spec.data.root is None:
        raise InputError(
            "data.root is not set: the study does not know where the images are. "
            "Fix: pass --data DIR or set root in [data]."
        )
    axes = {axis: value for axis, value in params.items() if axis in train_keys()}
    base = Path(spec.study.artifacts) / spec.study.name if folder is None else Path(folder)
    try:
        return CellConfig.of(
            spec.train,
            data=spec.data,
            learning_rate=params["learning_rate"],
            seed=params["seed"],
            out_dir=str(base / cell_key(params)),
            **axes,
        )
    except ConfigError as error:
        section = "grid" if error.key in params else "train"
        raise InputError(f"{error.worded(f'{section}.{error.key}')}") from error


def check_cells(spec: StudySpec) -> None:
    """Build every cell's config now, so a bad combination fails before any worker starts."""
    for params in spec.cells():
        try:
            cell_config(spec, params)
        except InputError as error:
            raise InputError(f"cell {cell_key(params)}: {error}") from error
