"""A study after its first run: failed cells back in the queue, and a grid grown in place.

Both keep the grid study exactly-once: ``retry_cells`` queues through the same check-and-insert
as the automatic retries (``_retry.queue_again``), and ``extend_grid`` renumbers every trial to
the bigger grid in one transaction, under the study lock, so that stock ``GridSampler``,
optuna-dashboard and running workers (``_CellSampler``) all see one coherent grid.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.storages import BaseStorage

from storage import rdb_backend, rewrite_study, study_lock
from study.grid import _attrs
from study.grid._attrs import INTERRUPTED, retry_budget
from study.grid._grid import (
    CellState,
    _cells,
    _check_grid,
    _fill,
    _sampler,
    _where,
    cell_params,
    cell_states,
)
from study.grid._retry import queue_again
from study.spec import check_cells, spec_from_mapping
from trainer import InputError
from trainer._errors import short

_logger = logging.getLogger(__name__)


def failed_for_good(study: optuna.Study) -> list[CellState]:
    """The cells whose last try failed with their retries spent: only ``retry_cells`` (``lrstudy
    retry``) brings them back. A cell failed a moment ago with retries left is not among them."""
    budget = retry_budget(study)
    return [
        state
        for state in cell_states(study)
        if state.state == "failed" and state.retries + (state.error != INTERRUPTED) > budget
    ]


@dataclass(frozen=True)
class Retried:
    """What ``retry_cells`` did: the cells it queued, and named cells already queued."""

    queued: list[CellState]
    pending: list[CellState]


def retry_cells(study: optuna.Study, cells: Sequence[Mapping[str, Any]] | None = None) -> Retried:
    """Queue failed cells again, each with a fresh retry budget (``retries_used`` 0).

    The new WAITING trial of a cell continues its lineage (``failed_trial``, ``retry_history``)
    and its checkpoint: a worker resumes it. A complete cell is never queued, so each cell keeps
    at most one COMPLETE trial.

    Args:
        study: A grid study.
        cells: The cells to queue, each as axis -> value (every axis). Defaults to every failed
            cell.

    Raises:
        InputError: a named cell is complete, or is no cell of the grid.
    """
    states = cell_states(study)
    if cells is None:
        targets = [state for state in states if state.state == "failed"]
    else:
        targets = [_named_cell(study, states, params) for params in cells]
    pending = [state for state in targets if state.state in ("waiting", "running")]
    ids = {trial.number: trial._trial_id for trial in study.get_trials(deepcopy=False)}
    queued = []
    with study_lock(study._storage, study.study_name):
        for state in targets:
            if state.state != "failed" or state.trial_number is None:
                continue
            number = queue_again(study, ids[state.trial_number], used=0)
            if number is None:  # a worker queued it since we looked
                pending.append(state)
                continue
            queued.append(state)
            _logger.info(
                "cell %s (trial %d) queued again as trial %d with a fresh retry budget",
                state.key,
                state.trial_number,
                number,
            )
    return Retried(queued=queued, pending=pending)


def _named_cell(
    study: optuna.Study, states: list[CellState], params: Mapping[str, Any]
) -> CellState:
    given = ",".join(f"{axis}={value}" for axis, value in params.items())
    for state in states:
        if state.params == dict(params):
            if state.state == "complete":
                raise InputError(
                    f"--cell {given}: the cell is complete (trial {state.trial_number}); "
                    "retry queues only failed cells, see `lrstudy status`"
                )
            return state
    example = ",".join(f"{axis}={value}" for axis, value in states[0].params.items())
    raise InputError(
        f"--cell {given} names no cell of study {study.study_name!r}; give every axis with "
        f"one of its values, e.g. --cell {example} (see `lrstudy status`)"
    )


def extend_grid(study: optuna.Study, axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Add the cells of new values of the grid's axes, keeping every trial and its value.

    Example:
        ``extend_grid(study, {"seed": [0, 1, 2, 3, 4]})`` on a 4 x 3 grid adds 8 WAITING cells.

    Note:
        ``GridSampler`` numbers cells by a shuffle of the whole grid, so a bigger grid renumbers
        them: every trial's ``grid_id`` and ``search_space``, the parameters' distributions
        (their choices grow), the study's grid and its stored spec and fingerprint are
        rewritten in one transaction, under the study lock; then the new cells are added (if
        this process dies in between, the next ``load_grid_study`` adds them). New values go
        after the old ones of their axis, so stored parameter values keep their meaning.
        Running workers notice the bigger grid before their next claim and load the study
        again (``run_worker``). Optuna's copy of a study caches its finished trials, so
        ``study`` (and any copy loaded before) must be loaded again to read the new numbering.

    Args:
        study: A grid study (made by ``create_grid_study``) in an RDB storage.
        axes: Axis -> all its values: the old ones, and new ones to add.

    Returns:
        The new cells (axis -> value), in the grid's order; none when nothing is new.

    Raises:
        InputError: an axis is not one of the grid's, a value of the grid is left out, or the
            bigger grid breaks a rule of the spec (one line naming the keys).
    """
    # Past Optuna's cache of finished trials, which this rewrite changes.
    storage = rdb_backend(study._storage) or study._storage
    study_id, name = study._study_id, study.study_name
    with study_lock(storage, name):
        grid = storage.get_study_system_attrs(study_id).get(_attrs.GRID)
        if grid is None:
            raise InputError(f"study {name!r} has no grid; it was not made by lrstudy")
        _check_kept(name, grid, axes)
        wider = {
            axis: [*values, *(v for v in axes.get(axis, ()) if v not in values)]
            for axis, values in grid.items()
        }
        if wider == grid:
            return []
        wider = _check_grid(wider)
        user_attrs = _grown_spec(study, wider, where=_where(storage))
        old_cells = [params for params, _ in _cells(grid)]
        rewrite_study(
            storage,
            study_id,
            study_system_attrs={_attrs.GRID: wider, _attrs.GRID_READY: False},
            study_user_attrs=user_attrs,
            trial_system_attrs=_renumbered(storage, study_id, wider),
            distributions={
                axis: (CategoricalDistribution(grid[axis]), CategoricalDistribution(wider[axis]))
                for axis in grid
                if wider[axis] != grid[axis]
            },
        )
        fresh = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(wider))
        _fill(fresh, wider, metric=None, max_retries=None, user_attrs={})
    added = [params for params, _ in _cells(wider) if params not in old_cells]
    _logger.info(
        "study %r: grid extended from %d to %d cells",
        name,
        len(old_cells),
        len(old_cells) + len(added),
    )
    return added


def _check_kept(
    name: str, grid: Mapping[str, list[Any]], axes: Mapping[str, Sequence[Any]]
) -> None:
    problems = [f"grid.{axis} (not an axis of the study)" for axis in axes if axis not in grid]
    for axis, values in axes.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            problems.append(f"grid.{axis} (not a list of values: {short(values)})")
        elif axis in grid and (dropped := [v for v in grid[axis] if v not in values]):
            problems.append(f"grid.{axis} (leaves out {short(dropped)})")
    if problems:
        raise InputError(
            f"study {name!r} cannot be extended so: {'; '.join(problems)}. Extend only adds "
            f"values to the axes {', '.join(grid)}, listing the old values too; for another "
            "grid create a new study with --set study.name=NEW"
        )


def _grown_spec(study: optuna.Study, grid: dict[str, list[Any]], *, where: str) -> dict[str, Any]:
    """The stored spec and fingerprint for the bigger grid; none for a study without a spec."""
    stored = study.user_attrs.get(_attrs.SPEC)
    if not isinstance(stored, dict):
        return {}
    raw = copy.deepcopy(stored)
    raw["grid"] = grid
    source = f"study {study.study_name!r}, extended"
    # The storage URL is never stored (it may hold a password); the check needs one.
    spec = spec_from_mapping({**raw, "study": {**raw["study"], "storage": where}}, source=source)
    try:
        check_cells(spec)
    except InputError as error:
        raise InputError(f"{source}: {error}") from error
    return {_attrs.SPEC: raw, _attrs.SPEC_FINGERPRINT: spec.fingerprint()}


def _renumbered(
    storage: BaseStorage, study_id: int, grid: Mapping[str, list[Any]]
) -> dict[int, dict[str, Any]]:
    """Each grid trial's ``grid_id`` and ``search_space`` in ``grid``, for the same cell."""
    search_space = _sampler(grid)._search_space
    ids = {_identity(params): grid_id for params, grid_id in _cells(grid)}
    renumbered = {}
    for trial in storage.get_all_trials(study_id, deepcopy=False):
        system = trial.system_attrs
        if _attrs.GRID_ID not in system:
            continue
        params = cell_params(system[_attrs.SEARCH_SPACE], int(system[_attrs.GRID_ID]))
        renumbered[trial._trial_id] = {
            _attrs.GRID_ID: ids[_identity(params)],
            _attrs.SEARCH_SPACE: search_space,
        }
    return renumbered


def _identity(params: Mapping[str, Any]) -> str:
    # JSON tells 1 from 1.0 and "a b" from "a-b", as the stored grid does.
    return json.dumps(sorted(params.items()))
