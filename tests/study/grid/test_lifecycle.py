"""A study's life after its first run, on real databases: study ids and folders, ``retry`` of
cells failed for good, ``extend`` of the grid (also under a running worker), tracebacks kept."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import download_artifact, get_all_artifact_meta
from optuna.trial import TrialState

from storage import open_storage
from study.grid import (
    CellObjective,
    RetryStaleCell,
    artifact_store,
    cell_params,
    cell_states,
    create_from_spec,
    create_grid_study,
    extend_grid,
    failed_for_good,
    load_grid_study,
    read_trial,
    retries_used,
    retry_cells,
    run_worker,
    spec_from_study,
    study_folder,
    study_uid,
)
from study.grid._attrs import LOST
from study.results import status_table
from study.spec import cell_key, load_preset
from tests.waiting import wait_for
from trainer import InputError

ROOT = Path(__file__).resolve().parents[3]
GRID = {"learning_rate": [0.1, 0.01, 0.001, 0.0001], "seed": [0, 1, 2]}
HUNG_CELL = "learning_rate=0.01__seed=1"
_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["optuna", "storage", "study.grid", __name__])


def _value(params: dict) -> float:
    return params["learning_rate"] + params["seed"]


class _Objective:
    """Near-zero work, suggesting each axis from the trial's own grid (as ``CellObjective``
    does); logs each call to ``calls/<cell>`` and can hang on the first try of one cell."""

    def __init__(self, calls: Path, hang_cell: str | None = None) -> None:
        self.calls = calls
        self.hang_cell = hang_cell

    def __call__(self, trial: optuna.Trial) -> float:
        space = trial.storage.get_trial_system_attrs(trial._trial_id)["search_space"]
        params = {axis: trial.suggest_categorical(axis, space[axis]) for axis in space}
        key = cell_key(params)
        with open(self.calls / key, "a") as log:
            log.write(f"{os.getpid()}\n")
        if key == self.hang_cell and not (self.calls / "hung").exists():
            (self.calls / "hung").write_text(str(os.getpid()))
            time.sleep(600)
        return _value(params)

    def count(self, key: str) -> int:
        path = self.calls / key
        return len(path.read_text().splitlines()) if path.exists() else 0


def _work(url: str, objective: _Objective) -> None:
    storage = open_storage(url, heartbeat_s=1, grace_s=3, stale_trial_callback=RetryStaleCell())
    run_worker(load_grid_study(storage, "lr"), objective, worker_id=f"w{os.getpid()}", poll_s=0.2)


def _lrstudy(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "study", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _coherent(study: optuna.Study, grid: dict) -> list[optuna.trial.FrozenTrial]:
    """Assert each trial's params are the cell its grid_id names in ``grid``; one COMPLETE
    trial per cell; stock GridSampler finds no unvisited cell. Returns the trials."""
    trials = optuna.load_study(study_name=study.study_name, storage=study._storage).get_trials()
    for trial in trials:
        assert trial.system_attrs["search_space"] == grid
        if trial.params:
            assert trial.params == cell_params(grid, trial.system_attrs["grid_id"])
    complete = Counter(t.system_attrs["grid_id"] for t in trials if t.state == TrialState.COMPLETE)
    cells = 1
    for values in grid.values():
        cells *= len(values)
    assert sorted(complete) == list(range(cells)) and set(complete.values()) == {1}
    stock = optuna.samplers.GridSampler(grid, seed=0)
    assert stock._get_unvisited_grid_ids(study) == []
    return trials


# --- the study's id and folder ----------------------------------------------------------------


def test_each_study_has_its_own_id_and_folder_even_under_a_name_used_before(
    tmp_path: Path,
) -> None:
    first = create_grid_study(f"sqlite:///{tmp_path / 'a.db'}", "lr", GRID)
    again = create_grid_study(f"sqlite:///{tmp_path / 'b.db'}", "lr", GRID)
    uids = [study_uid(first), study_uid(again)]
    assert uids[0] and uids[1] and uids[0] != uids[1]
    assert study_uid(load_grid_study(f"sqlite:///{tmp_path / 'a.db'}", "lr")) == uids[0]
    folders = [study_folder(tmp_path, "lr", uid) for uid in uids]
    assert folders[0] == tmp_path / f"lr-{uids[0][:8]}" and folders[0] != folders[1]
    # A study made before studies had an id keeps its old folder.
    assert study_folder(tmp_path, "lr", None) == tmp_path / "lr"


# --- extend -----------------------------------------------------------------------------------


def test_extend_from_3_to_5_seeds_keeps_the_first_12_trials_and_finishes_the_rest(
    storage_url: str, tmp_path: Path
) -> None:
    spec = load_preset("paper", ["study.name=lr", f"data.root={tmp_path}"])
    study, _ = create_from_spec(open_storage(storage_url), spec)
    run_worker(study, _Objective(tmp_path), worker_id="w", poll_s=0.05)
    before = {t.number: (t.params, t.value) for t in study.get_trials()}
    assert len(before) == 12

    added = extend_grid(study, {"seed": [0, 1, 2, 3, 4]})
    wider = {"learning_rate": GRID["learning_rate"], "seed": [0, 1, 2, 3, 4]}
    assert sorted(cell_key(p) for p in added) == sorted(
        cell_key({"learning_rate": lr, "seed": s}) for lr in wider["learning_rate"] for s in (3, 4)
    )
    reloaded = load_grid_study(storage_url, "lr")
    states = cell_states(reloaded)
    assert [s.state for s in states].count("complete") == 12
    assert [s.state for s in states].count("waiting") == 8
    # The stored spec and fingerprint follow, so `run` with the same --set finds its study.
    grown = load_preset(
        "paper", ["study.name=lr", f"data.root={tmp_path}", "grid.seed=[0,1,2,3,4]"]
    )
    assert create_from_spec(open_storage(storage_url), grown)[1] is False
    assert spec_from_study(reloaded, storage_url).grid["seed"] == (0, 1, 2, 3, 4)
    assert extend_grid(reloaded, {"seed": [4, 3, 2, 1, 0]}) == []  # nothing new: a no-op

    run_worker(reloaded, _Objective(tmp_path), worker_id="w2", poll_s=0.05)
    trials = _coherent(reloaded, wider)
    assert len(trials) == 20
    assert {t.number: (t.params, t.value) for t in trials if t.number < 12} == before
    assert all(t.value == _value(t.params) for t in trials)


def test_extend_refuses_to_drop_values_or_add_axes_in_one_line(tmp_path: Path) -> None:
    study = create_grid_study(f"sqlite:///{tmp_path / 's.db'}", "lr", GRID)
    with pytest.raises(InputError) as error:
        extend_grid(study, {"seed": [0, 1], "batch_size": [8, 16], "learning_rate": [0.1]})
    message = str(error.value)
    assert "\n" not in message
    for part in (
        "grid.batch_size (not an axis of the study)",
        "grid.seed (leaves out [2])",
        "grid.learning_rate (leaves out [0.01, 0.001, 0.0001])",
    ):
        assert part in message
    assert len(study.get_trials()) == 12 and load_grid_study(study._storage, "lr")


def test_a_worker_running_across_an_extend_serves_every_cell_its_own_values(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    create_grid_study(url, "lr", GRID)
    worker_study = load_grid_study(url, "lr")  # its sampler knows only the 12 cells
    base = _Objective(tmp_path)
    calls = []

    def extend_midway(trial: optuna.Trial) -> float:
        value = base(trial)  # the cell's values are chosen: it trains now, for minutes
        calls.append(trial.number)
        if len(calls) == 3:
            extend_grid(load_grid_study(url, "lr"), {"seed": [0, 1, 2, 3]})
        return value

    report = run_worker(worker_study, extend_midway, worker_id="w", poll_s=0.05)
    assert len(report.completed) == 16 and not report.failed
    wider = {"learning_rate": GRID["learning_rate"], "seed": [0, 1, 2, 3]}
    _coherent(worker_study, wider)
    assert [base.count(cell_key(p)) for p, _ in _cells_of(wider)] == [1] * 16


def _cells_of(grid: dict) -> list[tuple[dict, int]]:
    from study.grid._grid import _cells

    return _cells(grid)


# --- retry ------------------------------------------------------------------------------------


def test_a_sigkilled_cell_fails_for_good_and_retry_brings_it_back_exactly_once(
    storage_url: str, tmp_path: Path
) -> None:
    storage = open_storage(storage_url)
    create_grid_study(storage, "lr", GRID, max_retries=0)
    objective = _Objective(tmp_path, hang_cell=HUNG_CELL)
    doomed = _CTX.Process(target=_work, args=(storage_url, objective))
    doomed.start()
    wait_for(lambda: (tmp_path / "hung").exists())
    os.kill(doomed.pid, signal.SIGKILL)  # type: ignore[arg-type]
    doomed.join(10)
    survivor = _CTX.Process(target=_work, args=(storage_url, objective))
    survivor.start()
    survivor.join(120)
    assert survivor.exitcode == 0
    study = load_grid_study(storage_url, "lr")
    (lost,) = failed_for_good(study)
    assert (lost.key, lost.error, lost.retries) == (HUNG_CELL, LOST, 0)

    # As a user types it; the password of a PostgreSQL URL is never printed.
    refused = _lrstudy("retry", "--storage", storage_url, "--study", "lr", "--cell",
                       "learning_rate=0.1,seed=0")  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"lrstudy: error: --cell learning_rate=0.1,seed=0: the cell is complete (trial "
        f"{_trial_of(study, 'learning_rate=0.1__seed=0')}); retry queues only failed cells, "
        "see `lrstudy status`"
    ]
    unknown = _lrstudy("retry", "--storage", storage_url, "--study", "lr", "--cell", "seed=7")
    assert unknown.returncode == 2 and "names no cell of study 'lr'" in unknown.stderr
    done = _lrstudy("retry", "--study", "lr", env={"LRSTUDY_STORAGE": storage_url})
    assert done.returncode == 0, done.stderr
    assert f"queued 1 cell(s) of study 'lr' again, each with a fresh budget of 0 retries: " \
           f"{HUNG_CELL}" in done.stdout  # fmt: skip
    if storage_url.startswith("postgresql"):
        assert storage_url.split(":")[2].split("@")[0] not in done.stdout + done.stderr
        assert "LRSTUDY_STORAGE=<your URL> lrstudy launch --study lr --" in done.stdout
    again = _lrstudy("retry", "--storage", storage_url, "--study", "lr", "--cell", HUNG_CELL)
    assert again.returncode == 0 and f"cell {HUNG_CELL} is waiting already" in again.stdout

    run_worker(load_grid_study(storage_url, "lr"), objective, worker_id="after", poll_s=0.05)
    trials = _coherent(study, GRID)
    assert len(trials) == 13 and objective.count(HUNG_CELL) == 2
    (back,) = [t for t in trials if t.system_attrs.get("retry_history")]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == back.system_attrs["retry_history"]
    assert retries_used(back) == 0 and back.state == TrialState.COMPLETE
    assert retry_cells(load_grid_study(storage_url, "lr")).queued == []


def _trial_of(study: optuna.Study, key: str) -> int:
    (state,) = [s for s in cell_states(study) if s.key == key]
    assert state.trial_number is not None
    return state.trial_number


# --- tracebacks -------------------------------------------------------------------------------


def test_a_raising_cell_keeps_its_traceback_as_a_file_and_an_artifact(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_preset(
        "paper",
        [
            "study.name=tb",
            f"study.artifacts={tmp_path / 'artifacts'}",
            f"data.root={tmp_path / 'no-images'}",  # loading the data fails: no training
            "grid.learning_rate=[0.1]",
            "grid.seed=[0]",
            "worker.max_retries=0",
        ],
    )
    study, _ = create_from_spec(open_storage(url), spec)
    report = run_worker(study, CellObjective(spec), worker_id="w", poll_s=0.05)
    assert len(report.failed) == 1
    (trial,) = optuna.load_study(study_name="tb", storage=url).get_trials()
    record = read_trial(trial)
    folder = study_folder(tmp_path / "artifacts", "tb", study_uid(study))
    path = folder / "learning_rate=0.1__seed=0" / "traceback-trial-0.txt"
    assert record.traceback_file == str(path)
    text = path.read_text()
    assert text.startswith("study tb, trial 0, cell learning_rate=0.1__seed=0\n\nTraceback")
    assert record.error is not None and record.error.split(": ")[0] in text
    # The artifact is JSONL, a row per line, which the dashboard's viewer shows as a table.
    (meta,) = get_all_artifact_meta(trial, storage=study._storage)
    assert meta.filename == "traceback-trial-0.jsonl"
    copy = tmp_path / "downloaded.jsonl"
    download_artifact(
        artifact_store=artifact_store(folder), artifact_id=meta.artifact_id, file_path=str(copy)
    )
    rows = [json.loads(line) for line in copy.read_text().splitlines()]
    assert [row["line"] for row in rows] == list(range(1, len(rows) + 1))
    assert "\n".join(row["text"] for row in rows) == text.rstrip("\n")
    assert f"(traceback: {path})" in status_table(study)
    assert [s.key for s in failed_for_good(study)] == ["learning_rate=0.1__seed=0"]
    assert json.dumps(trial.user_attrs)  # JSON-safe
