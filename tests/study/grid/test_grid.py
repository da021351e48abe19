"""Grid studies: one WAITING trial per cell, created once even by racing processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from storage import open_storage
from study.grid import cell_states, create_grid_study, load_grid_study
from study.spec import cell_key
from trainer import InputError

GRID = {"learning_rate": [0.1, 0.01, 0.001, 0.0001], "seed": [0, 1, 2]}
CELLS = [
    {"learning_rate": lr, "seed": seed} for lr in GRID["learning_rate"] for seed in GRID["seed"]
]
# Child processes fork from a server that has the heavy modules loaded, not from this process
# (whose open database connections they must not share): each starts in a fraction of a second.
_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["optuna", "storage", "study.grid", __name__])


def test_cell_key_is_sorted_stable_and_filesystem_safe() -> None:
    assert cell_key({"seed": 2, "learning_rate": 0.001}) == "learning_rate=0.001__seed=2"
    assert cell_key({"learning_rate": 1e-4}) == "learning_rate=0.0001"
    assert cell_key({"optimizer": "a/b c", "x": True}) == "optimizer=a-b-c__x=True"
    assert len({cell_key(cell) for cell in CELLS}) == len(CELLS)


def test_each_cell_is_one_waiting_trial_that_stock_optuna_serves(storage_url: str) -> None:
    study = create_grid_study(storage_url, "lr", GRID, metric="val_accuracy")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.WAITING] * 12
    assert study.metric_names == ["val_accuracy"]
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert isinstance(load_grid_study(storage_url, "lr").sampler, optuna.samplers.GridSampler)
    # Plain ask/tell pops the waiting trials in order and GridSampler answers with each cell.
    loaded = load_grid_study(storage_url, "lr")
    served = []
    for _ in CELLS:
        trial = loaded.ask()
        served.append(
            {
                "learning_rate": trial.suggest_float("learning_rate", 1e-5, 1.0, log=True),
                "seed": trial.suggest_int("seed", 0, 2),
            }
        )
    assert served == CELLS
    assert len(loaded.get_trials()) == 12


def test_creating_again_is_a_no_op_and_another_grid_is_refused(storage_url: str) -> None:
    create_grid_study(storage_url, "lr", GRID, user_attrs={"owner": "ana"})
    again = create_grid_study(storage_url, "lr", dict(GRID), user_attrs={"owner": "bob"})
    assert len(again.get_trials()) == 12
    assert again.user_attrs["owner"] == "ana"
    with pytest.raises(InputError, match=r"already has the grid .*use another study name"):
        create_grid_study(storage_url, "lr", {"learning_rate": [0.1], "seed": [0]})


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        ({}, "no axes"),
        ({"learning_rate": []}, "non-empty list"),
        ({"learning_rate": "0.1"}, "non-empty list"),
        ({"learning_rate": [0.1, None]}, "finite numbers, strings or booleans"),
        ({"learning_rate": [float("nan")]}, "finite numbers"),
        ({"seed": [1, 1]}, "repeats a value"),
        ({"learning_rate": [1, 1.0]}, "repeats a value"),  # one grid id for both
        ({"weights": ["/a/b.h5", "/a-b.h5"]}, "repeats a value"),  # one cell folder for both
    ],
)
def test_bad_grids_are_refused(tmp_path: Path, grid: dict, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        create_grid_study(f"sqlite:///{tmp_path / 's.db'}", "lr", grid)


def test_missing_study_names_the_masked_url_and_the_fix(postgres_storage_url: str) -> None:
    with pytest.raises(InputError) as caught:
        load_grid_study(postgres_storage_url, "nope")
    message = str(caught.value)
    assert "study 'nope' not found in postgresql://postgres:***@" in message
    assert "create it with `lrstudy create`" in message
    password = postgres_storage_url.split(":")[2].split("@")[0]
    assert password not in message


def _create(url: str, barrier: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    create_grid_study(url, "lr", GRID)


def test_racing_creators_make_exactly_one_trial_per_cell(storage_url: str) -> None:
    barrier = _CTX.Barrier(4)
    creators = [_CTX.Process(target=_create, args=(storage_url, barrier)) for _ in range(4)]
    for process in creators:
        process.start()
    for process in creators:
        process.join(60)
    assert [p.exitcode for p in creators] == [0, 0, 0, 0]
    trials = optuna.load_study(study_name="lr", storage=storage_url).get_trials()
    assert len(trials) == 12
    assert sorted(t.system_attrs["grid_id"] for t in trials) == list(range(12))


def _create_then_die(url: str) -> None:
    """Crash the creator (as a SIGKILL would) after it has written 5 of the 12 cells."""
    written = 0
    add_trial = optuna.Study.add_trial

    def add_then_maybe_die(self: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal written
        if written == 5:
            os._exit(9)
        add_trial(self, trial)
        written += 1

    optuna.Study.add_trial = add_then_maybe_die  # type: ignore[method-assign]
    create_grid_study(url, "lr", GRID)


def test_cells_a_crashed_creator_left_out_are_filled_by_the_next_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    creator = _CTX.Process(target=_create_then_die, args=(url,))
    creator.start()
    creator.join(60)
    assert creator.exitcode == 9
    assert len(optuna.load_study(study_name="lr", storage=url).get_trials()) == 5
    study = load_grid_study(url, "lr")
    assert sorted(t.system_attrs["grid_id"] for t in study.get_trials()) == list(range(12))
    assert [c.params for c in cell_states(study)] == CELLS


def test_cell_states_follow_the_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url)
    study = create_grid_study(storage, "lr", GRID)
    trials = study.get_trials()
    complete, running, failed = trials[0]._trial_id, trials[1]._trial_id, trials[2]._trial_id
    for trial_id in (complete, running, failed):
        assert storage.set_trial_state_values(trial_id, TrialState.RUNNING)
    storage.set_trial_user_attr(running, "worker_id", "gpu3")
    storage.set_trial_intermediate_value(running, 4, 0.8)
    storage.set_trial_user_attr(failed, "error", "ResourceExhaustedError: OOM")
    storage.set_trial_state_values(complete, TrialState.COMPLETE, [0.9])
    storage.set_trial_state_values(failed, TrialState.FAIL)
    states = cell_states(load_grid_study(url, "lr"))
    assert [s.state for s in states[:4]] == ["complete", "running", "failed", "waiting"]
    assert states[0].value == 0.9 and states[0].key == "learning_rate=0.1__seed=0"
    assert (states[1].worker_id, states[1].step) == ("gpu3", 4)
    assert states[2].error == "ResourceExhaustedError: OOM"
    assert [s.trial_number for s in states] == list(range(12))


def test_stock_optuna_cli_lists_the_trials(storage_url: str) -> None:
    create_grid_study(storage_url, "lr", GRID)
    optuna_cli = Path(sys.executable).with_name("optuna")
    result = subprocess.run(
        [str(optuna_cli), "trials", "--storage", storage_url, "--study-name", "lr", "-f", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rows = json.loads(result.stdout)
    assert len(rows) == 12
    assert {row["state"] for row in rows} == {"WAITING"}


def test_grid_ids_map_to_the_params_that_stock_grid_sampler_serves(tmp_path: Path) -> None:
    # The grid reads two private GridSampler attributes (its shuffled cells and its search
    # space); optuna is pinned below its next major, and this test pins their meaning: for
    # every grid id, the values we predict are those a stock GridSampler trial suggests.
    from study.grid import cell_params

    grid = {"seed": [0, 1, 2], "learning_rate": [0.1, 0.01], "batch_size": [8, 32]}
    url = f"sqlite:///{tmp_path / 'g.db'}"
    create_grid_study(url, "g", grid)
    served = optuna.load_study(
        study_name="g", storage=url, sampler=optuna.samplers.GridSampler(grid, seed=0)
    )
    seen = set()
    for frozen in served.get_trials():  # as a worker lists them before claiming
        grid_id = frozen.system_attrs["grid_id"]
        assert served._storage.set_trial_state_values(frozen._trial_id, TrialState.RUNNING)
        trial = optuna.Trial(served, frozen._trial_id)
        suggested = {
            axis: trial.suggest_categorical(axis, values) for axis, values in grid.items()
        }
        assert suggested == cell_params(frozen.system_attrs["search_space"], grid_id)
        seen.add(grid_id)
    assert seen == set(range(12))
