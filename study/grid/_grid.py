"""A grid of cells as one Optuna study whose trials exist before any worker starts.

Plain ``GridSampler`` picks a cell when a trial starts, so parallel workers duplicate cells near
the end of the grid (we measured 15 trials for 12 cells with 4 workers). Here every cell is a
WAITING trial from the start, carrying the ``grid_id`` and ``search_space`` system attributes
that ``GridSampler.before_trial`` would have set; workers only claim trials (a compare-and-set
from WAITING to RUNNING) and never ask for new ones. ``GridSampler.sample_independent`` then
serves each trial its cell's values, and stock Optuna and optuna-dashboard see an ordinary grid
study.
"""

from __future__ import annotations

import itertools
import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from storage import LrstudyStorage, mask_url, open_storage, study_lock
from study.grid import _attrs
from study.grid._attrs import DEFAULT_MAX_RETRIES, read_trial
from study.spec import cell_key
from trainer import InputError

_logger = logging.getLogger(__name__)

_SAMPLER_SEED = 0  # GridSampler shuffles its grid ids; one fixed seed keeps them stable.


@dataclass(frozen=True)
class CellState:
    """Where one grid cell stands, for ``lrstudy status`` and for library users.

    ``state`` is ``waiting``, ``running``, ``complete`` or ``failed`` (failed for good, or failed
    a moment ago and about to be re-queued). ``trial_number`` is the trial that decides it: the
    complete one, else the running or waiting one, else the last failed one.
    """

    key: str
    params: dict[str, Any]
    grid_id: int
    state: str
    trial_number: int | None
    retries: int
    error: str | None
    worker_id: str | None
    host: str | None
    step: int | None
    value: float | None


def create_grid_study(
    storage: str | BaseStorage,
    name: str,
    grid: Mapping[str, Sequence[Any]],
    *,
    metric: str = "val_accuracy",
    max_retries: int = DEFAULT_MAX_RETRIES,
    user_attrs: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """Create the study ``name`` with one WAITING trial per cell of ``grid``, or load it.

    Example:
        ``create_grid_study("sqlite:///lrstudy.db", "lr", {"learning_rate": [0.1, 0.01],
        "seed": [0, 1, 2]})`` makes 6 trials, numbered in the grid's order.

    Note:
        Safe to call from many processes and machines at once: the study lock serialises
        creators, so exactly one trial exists per cell, and a later call fills in the cells that
        a creator killed half-way left out. Calling it again on a finished study changes
        nothing; ``user_attrs`` are written only while the study is not yet complete.

    Args:
        storage: A storage URL or an Optuna storage.
        name: The study name.
        grid: Axis name to its values (str, int, float, bool); cells are every combination,
            in this order.
        metric: Name of the maximised objective value. Defaults to `"val_accuracy"`.
        max_retries: Retries a failing cell may spend (an objective that raised, a worker that
            died); stored with the study, so every worker applies the same budget.
            Defaults to `2`.
        user_attrs: Study user attributes to record at creation. Defaults to none.

    Raises:
        InputError: the grid is empty or holds unsupported values, or the study exists with
            another grid.
    """
    grid = _check_grid(grid)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise InputError(f"max_retries must be an integer >= 0; got {max_retries!r}")
    storage = _as_storage(storage)
    with study_lock(storage, name):
        try:
            study = optuna.create_study(
                storage=storage, study_name=name, direction="maximize", sampler=_sampler(grid)
            )
            cells = math.prod(map(len, grid.values()))
            _logger.info("created study %r with %d cells", name, cells)
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(grid))
        _fill(study, grid, metric=metric, max_retries=max_retries, user_attrs=user_attrs or {})
    return study


def load_grid_study(storage: str | BaseStorage, name: str) -> optuna.Study:
    """Load a study made by ``create_grid_study``, its grid sampler rebuilt from the study.

    A study whose creator died half-way is completed here (under the study lock).

    Raises:
        InputError: no such study, or it was not made by ``create_grid_study``.
    """
    storage = _as_storage(storage)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError as error:
        raise InputError(
            f"study {name!r} not found in {_where(storage)}; create it with `lrstudy create`"
        ) from error
    system_attrs = storage.get_study_system_attrs(study_id)
    grid = system_attrs.get(_attrs.GRID)
    if grid is None:
        raise InputError(
            f"study {name!r} in {_where(storage)} has no grid (it was not made by lrstudy, or "
            "its creation stopped early); create it again with `lrstudy create`"
        )
    study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(grid))
    if not system_attrs.get(_attrs.GRID_READY):
        with study_lock(storage, name):
            _fill(study, grid, metric=None, max_retries=None, user_attrs={})
    return study


def grid_of(study: optuna.Study) -> dict[str, list[Any]] | None:
    """The grid (axis -> values) of a study made by ``create_grid_study``; None for others."""
    return study._storage.get_study_system_attrs(study._study_id).get(_attrs.GRID)


def cell_states(study: optuna.Study) -> list[CellState]:
    """One entry per grid cell, in the grid's order (see ``CellState``)."""
    grid = grid_of(study)
    if grid is None:
        raise InputError(f"study {study.study_name!r} has no grid; it was not made by lrstudy")
    by_cell: dict[int, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False):
        if _attrs.GRID_ID in trial.system_attrs:
            by_cell.setdefault(int(trial.system_attrs[_attrs.GRID_ID]), []).append(trial)
    return [
        _cell_state(params, grid_id, sorted(by_cell.get(grid_id, []), key=lambda t: t.number))
        for params, grid_id in _cells(grid)
    ]


def _cell_state(params: dict[str, Any], grid_id: int, trials: list[FrozenTrial]) -> CellState:
    failed = [t for t in trials if t.state == TrialState.FAIL]
    deciding = [
        (name, t)
        for state, name in (
            (TrialState.COMPLETE, "complete"),
            (TrialState.RUNNING, "running"),
            (TrialState.WAITING, "waiting"),
        )
        for t in trials
        if t.state == state
    ]
    if deciding:
        name, trial = deciding[0]
    elif failed:
        name, trial = "failed", failed[-1]
    else:  # The creator has not written this cell yet.
        return CellState(
            cell_key(params), params, grid_id, "waiting", None, 0, None, None, None, None, None
        )
    steps = trial.intermediate_values
    record = read_trial(trial)
    # A trial failed for a stale heartbeat cannot be written to any more: its worker died.
    error = (read_trial(failed[-1]).error or _attrs.LOST) if failed else None
    return CellState(
        key=cell_key(params),
        params=params,
        grid_id=grid_id,
        state=name,
        trial_number=trial.number,
        retries=record.retries_used,
        error=error if name != "complete" else None,
        worker_id=record.worker_id,
        host=record.host,
        step=max(steps) if steps else None,
        value=trial.value if name == "complete" else None,
    )


def _fill(
    study: optuna.Study,
    grid: dict[str, list[Any]],
    *,
    metric: str | None,
    max_retries: int | None,
    user_attrs: Mapping[str, Any],
) -> None:
    """Write the grid and the missing cells of ``study``; the caller holds the study lock."""
    storage, study_id = study._storage, study._study_id
    system_attrs = storage.get_study_system_attrs(study_id)
    stored = system_attrs.get(_attrs.GRID)
    if stored is not None and stored != grid:
        raise InputError(
            f"study {study.study_name!r} in {_where(storage)} already has the grid {stored}, "
            f"not {grid}; use another study name, or the same grid"
        )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise InputError(
            f"study {study.study_name!r} in {_where(storage)} minimises, but grid studies "
            "maximise their metric; use another study name"
        )
    if system_attrs.get(_attrs.GRID_READY):
        return
    if stored is None and _attrs.STUDY_UID not in system_attrs:
        storage.set_study_system_attr(study_id, _attrs.STUDY_UID, str(uuid.uuid4()))
    storage.set_study_system_attr(study_id, _attrs.GRID, grid)
    if max_retries is not None:
        storage.set_study_system_attr(study_id, _attrs.MAX_RETRIES, max_retries)
    if metric is not None:
        study.set_metric_names([metric])
    for key, value in user_attrs.items():
        study.set_user_attr(key, value)
    search_space = _sampler(grid)._search_space
    present = {t.system_attrs.get(_attrs.GRID_ID) for t in study.get_trials(deepcopy=False)}
    missing = [(params, grid_id) for params, grid_id in _cells(grid) if grid_id not in present]
    for _, grid_id in missing:
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                system_attrs={_attrs.SEARCH_SPACE: search_space, _attrs.GRID_ID: grid_id},
            )
        )
    if missing and present - {None}:
        _logger.info("study %r: added %d missing cells", study.study_name, len(missing))
    storage.set_study_system_attr(study_id, _attrs.GRID_READY, True)


def cell_params(search_space: Mapping[str, Sequence[Any]], grid_id: int) -> dict[str, Any]:
    """The values of cell ``grid_id``, as the study's ``GridSampler`` will serve them."""
    values = _sampler(search_space)._all_grids[grid_id]
    return dict(zip(sorted(search_space), values, strict=True))


def _cells(grid: Mapping[str, Sequence[Any]]) -> list[tuple[dict[str, Any], int]]:
    """Every cell in the grid's own order, with the id ``GridSampler`` knows it by."""
    sampler = _sampler(grid)
    # GridSampler keeps its (shuffled) cells as tuples ordered by sorted axis name.
    ids = {values: grid_id for grid_id, values in enumerate(sampler._all_grids)}
    names = list(grid)
    cells = []
    for values in itertools.product(*grid.values()):
        params = dict(zip(names, values, strict=True))
        cells.append((params, ids[tuple(params[n] for n in sorted(names))]))
    return cells


def _sampler(grid: Mapping[str, Sequence[Any]]) -> optuna.samplers.GridSampler:
    return _CellSampler(dict(grid), seed=_SAMPLER_SEED)


class _CellSampler(optuna.samplers.GridSampler):
    """``GridSampler`` that serves a trial of a grown grid its cell too.

    ``lrstudy extend`` renumbers the cells (grid ids index GridSampler's shuffle of the whole
    grid) and rewrites every trial's ``grid_id`` and ``search_space``. A worker that loaded the
    study before that would index its old grid with a new id; this sampler reads both
    attributes of the trial in one snapshot and, when the trial's grid is not its own, takes the
    cell from the trial's grid, so it serves the same values before and after the rewrite.
    """

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        system = dict(trial.system_attrs)  # one read of the storage: one consistent snapshot
        space = system.get(_attrs.SEARCH_SPACE)
        if space is None or _attrs.GRID_ID not in system or space == self._search_space:
            return super().sample_independent(study, trial, param_name, param_distribution)
        return cell_params(space, int(system[_attrs.GRID_ID]))[param_name]


def _check_grid(grid: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    if not grid:
        raise InputError("grid has no axes; give at least one, e.g. {'learning_rate': [0.01]}")
    checked: dict[str, list[Any]] = {}
    for axis, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise InputError(
                f"grid axis {axis!r} must be a non-empty list of values; got {values!r}"
            )
        for value in values:
            bad_float = isinstance(value, float) and not math.isfinite(value)
            if not isinstance(value, (str, int, float, bool)) or bad_float:
                raise InputError(
                    f"grid axis {axis!r} holds {value!r}; values must be finite numbers, "
                    "strings or booleans"
                )
        # Equal values (1 and 1.0, True and 1) would share a grid id, and values whose cell
        # keys agree ("a/b" and "a-b") a folder: each cell must be one of its own.
        keys = {cell_key({axis: value}) for value in values}
        if len(set(values)) != len(values) or len(keys) != len(values):
            raise InputError(f"grid axis {axis!r} repeats a value: {list(values)}; list each once")
        checked[str(axis)] = list(values)
    return checked


def _as_storage(storage: str | BaseStorage) -> BaseStorage:
    return open_storage(storage) if isinstance(storage, str) else storage


def _where(storage: BaseStorage) -> str:
    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, LrstudyStorage):
        return backend.shown_url
    url = getattr(backend, "url", None)
    return mask_url(url) if url else type(backend).__name__
