"""A study's life as a user types it: a rerun after deleting the database, a run that cannot
finish and says why, ``retry`` and ``extend``, then the same ``run`` or ``launch`` finishing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from study.grid import load_grid_study, read_trial, retries_used, run_worker, study_uid
from study.grid._attrs import LOST
from study.spec import cell_key
from tests.study.cli.test_study import (
    QUICK,
    ROOT,
    assert_exactly_once,
    complete_trials,
    lrstudy,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def flags(tmp_path: Path, cache_dir: str) -> list[str]:
    """The quick study's flags without --data and --storage, its files under tmp_path."""
    return [*QUICK, "--set", f"data.cache_dir={cache_dir}",
            "--set", f"study.artifacts={tmp_path / 'artifacts'}"]  # fmt: skip


def _folder(tmp_path: Path, url: str) -> Path:
    uid = study_uid(load_grid_study(url, "quick"))
    assert uid is not None
    return tmp_path / "artifacts" / f"quick-{uid[:8]}"


def test_a_rerun_after_deleting_the_database_never_meets_the_old_checkpoints(
    tmp_path: Path, dataset_dir: Path, flags: list[str]
) -> None:
    db = tmp_path / "lrstudy.db"
    run = ["run", "--storage", f"sqlite:///{db}", "--data", str(dataset_dir), *flags]
    # The first run's seed 0 leaves checkpoints in four of the twelve cells' folders.
    first = lrstudy(*run, "--set", "grid.seed=[0]", "--workers", "2", timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    old = _folder(tmp_path, f"sqlite:///{db}")
    db.unlink()
    again = lrstudy(*run, "--set", "train.image_size=48", "--workers", "2", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "study quick: 12/12 complete, 0 running, 0 waiting, 0 failed" in again.stdout
    assert_exactly_once(f"sqlite:///{db}")
    new = _folder(tmp_path, f"sqlite:///{db}")
    assert new != old and sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == sorted(
        [old.name, new.name]
    )
    for trial in complete_trials(f"sqlite:///{db}"):
        assert Path(trial.user_attrs["out_dir"]).parent == new
        assert trial.user_attrs["epochs_run"] == 1
    assert "of another cell" not in again.stderr


def test_a_run_that_cannot_finish_says_why_and_retry_lets_the_same_run_finish(
    tmp_path: Path, make_dataset, flags: list[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # A truncated image passes the listing before the study is made; each cell fails on it.
    images = make_dataset(corrupt=True)
    run = ["run", "--storage", url, "--data", str(images.root), *flags,
           "--set", "grid.seed=[0, 1]", "--set", "worker.max_retries=0",
           "--workers", "1"]  # fmt: skip
    failed = lrstudy(*run, timeout=300)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert failed.stderr.count("created study 'quick'") == 1
    reason, fix = failed.stderr.strip().splitlines()[-2:]
    assert reason.startswith(
        "lrstudy: 8 cells failed for good: InputError: 1 image(s) cannot be decoded: "
    )
    assert reason.endswith(
        "(learning_rate=0.1__seed=0, learning_rate=0.1__seed=1, learning_rate=0.01__seed=0, "
        "learning_rate=0.01__seed=1, and 4 more)"
    )
    assert fix == (
        "lrstudy: fix the cause (`lrstudy status` shows each reason, and where a traceback "
        "is), then "
        f"`lrstudy retry --storage '{url}' --study quick` and run this command again"
    )

    status = lrstudy("status", "--storage", url, "--study", "quick")
    assert status.returncode == 0, status.stderr
    folder = _folder(tmp_path, url)
    assert (
        f"study id {study_uid(load_grid_study(url, 'quick'))}, files in {folder}" in status.stdout
    )
    study = optuna.load_study(study_name="quick", storage=url)
    for trial in study.get_trials():
        record = read_trial(trial)
        path = folder / str(record.cell) / f"traceback-trial-{trial.number}.txt"
        assert record.traceback_file == str(path) and f"(traceback: {path})" in status.stdout
        assert "Traceback (most recent call last)" in path.read_text()
        metas = get_all_artifact_meta(trial, storage=study._storage)
        assert [meta.filename for meta in metas] == [path.with_suffix(".jsonl").name]
    assert status.stdout.splitlines()[-1] == (
        f"fix the cause, then: lrstudy retry --storage '{url}' --study quick"
    )

    (corrupt,) = images.corrupt
    (images.root / corrupt).unlink()  # the cause, fixed
    retried = lrstudy("retry", "--storage", url, "--study", "quick")
    assert retried.returncode == 0, retried.stderr
    assert "queued 8 cell(s) of study 'quick' again" in retried.stdout
    finished = lrstudy(*run, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_exactly_once(url, seeds=(0, 1))
    trials = optuna.load_study(study_name="quick", storage=url).get_trials()
    failures = {t.number for t in trials if t.state == TrialState.FAIL}
    for trial in complete_trials(url):
        (first,) = trial.system_attrs["retry_history"]
        assert first in failures and retries_used(trial) == 0


def test_a_sigkilled_worker_leaves_its_cell_failed_for_good_until_retry_brings_it_back(
    storage_url: str, tmp_path: Path, dataset_dir: Path, flags: list[str]
) -> None:
    url = storage_url
    study = ["--storage", url, "--study", "quick"]
    # Four cells are enough to lose one and bring it back; each more costs seconds of CI.
    rates, seeds = (0.1, 0.01), (0, 1)
    created = lrstudy("create", "--storage", url, "--data", str(dataset_dir), *flags,
                      "--set", f"grid.learning_rate={list(rates)}",
                      "--set", f"grid.seed={list(seeds)}",
                      "--set", "worker.max_retries=0",
                      "--set", "worker.heartbeat_s=1", "--set", "worker.grace_s=4")  # fmt: skip
    assert created.returncode == 0, created.stderr
    worker = subprocess.Popen(
        [sys.executable, "-m", "study", "worker", *study, "--worker-id", "doomed"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []

    def read() -> None:
        for line in worker.stderr:  # type: ignore[union-attr]
            log.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = re.compile(r"worker doomed: trial (\d+) cell (\S+) started")
    try:
        first_cell = lambda: any(map(started.search, log))  # noqa: E731
        wait_for(first_cell, timeout_s=180, what="the worker's first cell")
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait(timeout=60) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=60)
    reader.join(timeout=60)
    (match,) = [m for m in map(started.search, log) if m]
    number, key = int(match[1]), match[2]
    trials = optuna.load_study(study_name="quick", storage=url).get_trials()
    assert [t.number for t in trials if t.state == TrialState.RUNNING] == [number]  # midway
    assert not [t for t in trials if t.state == TrialState.COMPLETE]

    # The next run finds the trial stale after the grace period; no retry is left for it.
    launch = ["launch", *study, "--workers", "1"]
    failed = lrstudy(*launch, timeout=600)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "study quick: 3/4 complete, 0 running, 0 waiting, 1 failed" in failed.stdout
    assert f"trial {number} " in failed.stderr and "lost its worker" in failed.stderr
    retry = (
        f"lrstudy retry --storage '{url}' --study quick"
        if url.startswith("sqlite")
        else "LRSTUDY_STORAGE=<your URL> lrstudy retry --study quick"
    )
    reason, fix = failed.stderr.strip().splitlines()[-2:]
    assert reason == f"lrstudy: 1 cell failed for good: {LOST} ({key})"
    assert fix == (
        "lrstudy: fix the cause (`lrstudy status` shows each reason, and where a traceback "
        "is), then "
        f"`{retry}` and run this command again"
    )
    before = {t.number: (t.params, t.value) for t in complete_trials(url)}
    assert len(before) == 3

    status = lrstudy("status", *study)
    assert status.returncode == 0, status.stderr
    lr, seed = (part.split("=")[1] for part in key.split("__"))
    (row,) = [line for line in status.stdout.splitlines() if line.split()[:2] == [lr, seed]]
    assert row.split()[2:4] == ["failed", str(number)]
    assert row.endswith(f"retries 0: {LOST}")
    assert status.stdout.splitlines()[-2:] == [
        f"1 cell failed for good: {LOST} ({key})",
        f"fix the cause, then: {retry}",
    ]

    retried = lrstudy("retry", *study)
    assert retried.returncode == 0, retried.stderr
    assert (
        f"queued 1 cell(s) of study 'quick' again, each with a fresh budget of 0 retries: {key}"
        in retried.stdout
    )
    finished = lrstudy(*launch, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "study quick: 4/4 complete, 0 running, 0 waiting, 0 failed" in finished.stdout
    assert_exactly_once(url, rates=rates, seeds=seeds)
    trials = optuna.load_study(study_name="quick", storage=url).get_trials()
    assert len(trials) == 5
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [number]
    after = {t.number: (t.params, t.value) for t in complete_trials(url)}
    (back,) = set(after) - set(before)
    assert {n: after[n] for n in before} == before
    assert cell_key(after[back][0]) == key
    (lineage,) = [t for t in trials if t.number == back]
    assert lineage.system_attrs["retry_history"] == [number] and retries_used(lineage) == 0
    if not url.startswith("sqlite"):  # the password never shows
        password = url.split(":")[2].split("@")[0]
        for done in (created, failed, status, retried, finished):
            assert password not in done.stdout + done.stderr


def test_extend_adds_seeds_that_launch_trains_keeping_the_finished_cells(
    tmp_path: Path, dataset_dir: Path, flags: list[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert lrstudy("create", "--storage", url, "--data", str(dataset_dir), *flags).returncode == 0

    def instant(trial: optuna.Trial) -> float:
        space = trial.storage.get_trial_system_attrs(trial._trial_id)["search_space"]
        lr = trial.suggest_categorical("learning_rate", space["learning_rate"])
        return 0.5 + lr + trial.suggest_categorical("seed", space["seed"]) / 100

    run_worker(load_grid_study(url, "quick"), instant, worker_id="fake", poll_s=0.05)
    before = {t.number: (t.params, t.value) for t in complete_trials(url)}
    assert len(before) == 12

    study = ["--storage", url, "--study", "quick"]
    for bad, expected in (
        (["--set", "grid.seed=[0, 1]"], "grid.seed (leaves out [2])"),
        (["--set", "train.epochs=2"], "extend only adds grid values; train.epochs cannot"),
    ):
        refused = lrstudy("extend", *study, *bad)
        assert refused.returncode == 2, refused.stderr
        (line,) = refused.stderr.strip().splitlines()
        assert line.startswith("lrstudy: error: ") and expected in line
    five = "grid.seed=[0,1,2,3,4]"
    grown = lrstudy("extend", *study, "--set", five, env={"CUDA_VISIBLE_DEVICES": ""})
    assert grown.returncode == 0, grown.stderr
    launch = f"lrstudy launch --storage '{url}' --study quick --workers 1"
    assert grown.stdout.splitlines() == [
        "study 'quick': grid.seed gains 3, 4: 8 new cells, 20 in all",
        f"train them: {launch} (or your `lrstudy run` command of this study with --set "
        f"'{five}' added)",
    ]
    launched = lrstudy("launch", *study, "--workers", "2", timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "study quick: 20/20 complete, 0 running, 0 waiting, 0 failed" in launched.stdout
    after = complete_trials(url)
    per_cell = Counter((t.params["learning_rate"], t.params["seed"]) for t in after)
    assert sorted(per_cell) == sorted(
        (lr, seed) for lr in (0.1, 0.01, 0.001, 0.0001) for seed in range(5)
    )
    assert set(per_cell.values()) == {1} and len(after) == 20
    assert {t.number: (t.params, t.value) for t in after if t.number < 12} == before
    assert {t.params["seed"] for t in after if t.number >= 12} == {3, 4}
    assert all(t.user_attrs["epochs_run"] == 1 for t in after if t.number >= 12)  # trained
    active = (TrialState.WAITING, TrialState.RUNNING)
    assert not optuna.load_study(study_name="quick", storage=url).get_trials(states=active)
    # `run` with the same --set finds the grown study complete.
    again = lrstudy("run", "--storage", url, "--data", str(dataset_dir), *flags,
                    "--set", five, "--workers", "1")  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "every cell of study 'quick' is complete already" in again.stderr
