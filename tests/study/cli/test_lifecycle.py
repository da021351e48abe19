"""A study's life as a user types it: a rerun after deleting the database, a run that cannot
finish and says why, ``retry`` and ``extend``, then the same ``run`` or ``launch`` finishing."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from study.grid import load_grid_study, read_trial, retries_used, run_worker, study_uid
from tests.study.cli.test_study import QUICK, assert_exactly_once, complete_trials, lrstudy

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
    first = lrstudy(*run, "--workers", "2", timeout=600)
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
    tmp_path: Path, dataset_dir: Path, flags: list[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    images = tmp_path / "images"  # empty: every cell fails on loading its data
    images.mkdir()
    run = ["run", "--storage", url, "--data", str(images), *flags,
           "--set", "worker.max_retries=0", "--workers", "1"]  # fmt: skip
    failed = lrstudy(*run, timeout=300)
    assert failed.returncode == 1, failed.stderr[-3000:]
    reason, fix = failed.stderr.strip().splitlines()[-2:]
    assert reason.startswith("lrstudy: 12 cells failed for good: InputError: DATA ")
    assert reason.endswith(
        "(learning_rate=0.1__seed=0, learning_rate=0.1__seed=1, learning_rate=0.1__seed=2, "
        "learning_rate=0.01__seed=0, and 8 more)"
    )
    assert fix == (
        "lrstudy: fix the cause (`lrstudy status` shows where each traceback is), then "
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
        assert [meta.filename for meta in metas] == [path.name]
    assert status.stdout.splitlines()[-1] == (
        f"fix the cause, then: lrstudy retry --storage '{url}' --study quick"
    )

    shutil.copytree(dataset_dir, images, dirs_exist_ok=True)  # the cause, fixed
    retried = lrstudy("retry", "--storage", url, "--study", "quick")
    assert retried.returncode == 0, retried.stderr
    assert "queued 12 cell(s) of study 'quick' again" in retried.stdout
    finished = lrstudy(*run, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_exactly_once(url)
    trials = optuna.load_study(study_name="quick", storage=url).get_trials()
    failures = {t.number for t in trials if t.state == TrialState.FAIL}
    for trial in complete_trials(url):
        (first,) = trial.system_attrs["retry_history"]
        assert first in failures and retries_used(trial) == 0


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
    grown = lrstudy("extend", *study, "--set", "grid.seed=[0, 1, 2, 3]")
    assert grown.returncode == 0, grown.stderr
    assert grown.stdout.splitlines() == [
        "study 'quick': grid.seed gains 3: 4 new cells, 16 in all",
        f"train them: lrstudy launch --storage '{url}' --study quick --gpus all "
        "(or `lrstudy run` with the same --set)",
    ]
    launched = lrstudy("launch", *study, "--workers", "1", timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "study quick: 16/16 complete, 0 running, 0 waiting, 0 failed" in launched.stdout
    after = complete_trials(url)
    assert len(after) == 16
    assert {t.number: (t.params, t.value) for t in after if t.number < 12} == before
    assert {t.params["seed"] for t in after if t.number >= 12} == {3}
    # `run` with the same --set finds the grown study complete.
    again = lrstudy("run", "--storage", url, "--data", str(dataset_dir), *flags,
                    "--set", "grid.seed=[0, 1, 2, 3]", "--workers", "1")  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "every cell of study 'quick' is complete already" in again.stderr
