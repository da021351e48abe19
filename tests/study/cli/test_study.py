"""``lrstudy init | create | worker | launch | run | status`` as a user runs them: subprocesses."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import optuna
import pytest

from study import _exit
from study.grid import cell_states, load_grid_study, run_worker, study_uid
from study.grid._attrs import SPEC as SPEC_ATTR
from study.grid._attrs import SPEC_FINGERPRINT as FINGERPRINT_ATTR
from study.spec import load_preset, load_spec
from study.spec._presets import PAPER_TOML
from tests.postgres import PostgresServer, cut_on_lock
from tests.waiting import closed_port, wait_for

ROOT = Path(__file__).resolve().parents[3]
# The paper's 4 x 3 grid, made small enough for a CPU test.
QUICK = [
    "--set", 'train.model="small_cnn"',
    "--set", 'train.weights="none"',
    "--set", "train.image_size=32",
    "--set", "train.epochs=1",
    "--set", "train.eval_batch_size=32",
    "--set", 'data.split="kaggle"',
    "--set", "data.limit_per_class=6",
    "--set", "study.name=quick",
]  # fmt: skip


def lrstudy(
    *args: str, cwd: Path | None = None, timeout: float = 120, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "study", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def setup(tmp_path: Path, dataset_dir: Path, cache_dir: str) -> dict:
    """Storage URL and the flags that point a quick study at the test's own files."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    flags = [
        "--storage", url, "--data", str(dataset_dir),
        *QUICK,
        "--set", f"data.cache_dir={cache_dir}",
        "--set", f"study.artifacts={tmp_path / 'artifacts'}",
    ]  # fmt: skip
    return {"url": url, "flags": flags, "data": dataset_dir}


def complete_trials(url: str, name: str = "quick") -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=url)  # stock Optuna reads it
    return [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]


PAPER_RATES = (0.1, 0.01, 0.001, 0.0001)


def assert_exactly_once(
    url: str,
    name: str = "quick",
    rates: tuple[float, ...] = PAPER_RATES,
    seeds: tuple[int, ...] = (0, 1, 2),
) -> None:
    done = complete_trials(url, name)
    per_cell = Counter((t.params["learning_rate"], t.params["seed"]) for t in done)
    assert sorted(per_cell) == sorted((lr, seed) for lr in rates for seed in seeds)
    assert set(per_cell.values()) == {1}, per_cell
    study = optuna.load_study(study_name=name, storage=url)
    active = (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
    assert not study.get_trials(states=active)


# --- light commands --------------------------------------------------------------------------

HEAVY_PROBE = """
import json, sys
from study.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("keras", "tensorflow", "jax") if m in sys.modules)
print("PROBE", json.dumps({"code": code, "heavy": heavy}))
"""


def probe(*args: str, cwd: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", HEAVY_PROBE, *args], capture_output=True, text=True, cwd=cwd
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("PROBE"))
    return json.loads(line[6:])


def test_help_init_create_and_status_never_load_keras(tmp_path: Path, setup: dict) -> None:
    light = {"code": 0, "heavy": []}
    assert probe("--help", cwd=tmp_path) == light
    assert probe("init", str(tmp_path / "s.toml"), cwd=tmp_path) == light
    assert probe("create", *setup["flags"], cwd=tmp_path) == light
    assert probe("status", "--storage", setup["url"], "--study", "quick", cwd=tmp_path) == light


def test_init_writes_the_paper_spec_once(tmp_path: Path) -> None:
    done = lrstudy("init", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "lrstudy.toml").read_text() == PAPER_TOML
    assert load_spec(tmp_path / "lrstudy.toml") == load_preset("paper")
    again = lrstudy("init", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        "lrstudy: error: FILE 'lrstudy.toml' already exists; pass --force to overwrite it, "
        "or another FILE."
    ]
    assert lrstudy("init", "--force", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--set", "train.epochs=0"], "train.epochs must be an integer >= 1; got 0"),
        (["create", "--set", "train.epoch=2"], "unknown key train.epoch; allowed keys"),
        (["create", "--set", "epochs=2"], "--set expects section.key=VALUE; got 'epochs=2'"),
        (["create", "--spec", "missing.toml"], "--spec file 'missing.toml' does not exist"),
        (["create", "--preset", "fast"], "--preset must be one of paper, quick; got 'fast'"),
        (
            ["create", "--set", "grid.image_size=[16]"],
            "cell image_size=16__learning_rate=0.1__seed=0: "
            "grid.image_size must be an integer >= 32",
        ),
        (["run", "--per-gpu", "0"], "--per-gpu must be an integer >= 1; got 0"),
        (["run", "--workers", "0"], "--workers must be an integer >= 1; got 0"),
        (["run", "--gpus", "99"], "--gpus names GPU 99, which does not exist"),
    ],
)
def test_bad_values_end_in_one_line_and_exit_2(
    setup: dict, args: list[str], expected: str
) -> None:
    command = args[0]
    done = lrstudy(command, *setup["flags"], *args[1:])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrstudy: error: "), done.stderr
    assert expected in lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["create", "--storage", "sqlite:///{tmp}/db.sqlite"], "data.root is not set"),
        (["create", "--data", "{tmp}/nothing"], "is not a folder"),
        (["status", "--storage", "sqlite:///{tmp}/db.sqlite", "--study", "nope"], "no existing"),
        (["worker", "--study", "quick"], "--storage is missing and $LRSTUDY_STORAGE"),
        (["launch", "--storage", "sqlite:///{tmp}/x.db", "--study", "q"], "launch needs --gpus"),
        (["create", "--storage", "mysql://me:s3cret@db/x", "--data", "{data}"], "mysql"),
    ],
)
def test_bad_commands_end_in_one_line_and_exit_2(
    tmp_path: Path, dataset_dir: Path, args: list[str], expected: str
) -> None:
    args = [arg.format(tmp=tmp_path, data=dataset_dir) for arg in args]
    done = lrstudy(*args, env={"LRSTUDY_STORAGE": ""})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrstudy: error: "), done.stderr
    assert expected in lines[0]
    assert "s3cret" not in done.stderr + done.stdout


@pytest.mark.parametrize("command", ["create", "run"])
def test_a_folder_of_another_layout_is_refused_before_the_study_exists(
    tmp_path: Path, make_dataset, command: str
) -> None:
    db = tmp_path / "study.db"
    wrong = make_dataset().root / "train" / "NORMAL"  # images, but not the dataset's layout
    flat = make_dataset(layout="flat").root  # a pool, which QUICK's kaggle split cannot use
    for data, said in (
        (wrong, f"DATA {str(wrong)!r} holds neither train/val/test nor NORMAL/PNEUMONIA"),
        (flat, "split 'kaggle' needs the train/val/test folders"),
    ):
        done = lrstudy(command, "--storage", f"sqlite:///{db}", "--data", str(data), *QUICK)
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"lrstudy: error: {said}"), line
        assert not db.exists()


def test_create_is_idempotent_and_refuses_another_protocol(tmp_path: Path, setup: dict) -> None:
    first = lrstudy("create", *setup["flags"])
    assert first.returncode == 0, first.stderr
    assert "created study 'quick' with 12 cells" in first.stdout
    again = lrstudy("create", *setup["flags"])
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stdout and "nothing to do" in again.stdout
    # Another machine's paths are not the protocol: accepted.
    elsewhere = tmp_path / "copy"
    shutil.copytree(setup["data"], elsewhere)
    moved = lrstudy("create", *setup["flags"], "--data", str(elsewhere))
    assert moved.returncode == 0, moved.stderr
    assert "keeps the worker settings" not in moved.stderr
    # Worker settings are not the protocol either, but are the study's: said, not taken.
    kept = lrstudy("create", *setup["flags"], "--set", "worker.max_retries=5")
    assert kept.returncode == 0, kept.stderr
    assert (
        "study 'quick' keeps the worker settings it was made with: worker.max_retries "
        "(stored 2, given 5)"
    ) in kept.stderr
    refused = lrstudy(
        "create", *setup["flags"], "--set", "train.epochs=2", "--set", "grid.seed=[0]"
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "lrstudy: error: study 'quick' already exists with another protocol: grid.seed (stored "
        "[0, 1, 2], given [0]); train.epochs (stored 1, given 2). Fix: use the stored values, "
        "or a new name with --set study.name=NEW."
    ]
    study = optuna.load_study(study_name="quick", storage=setup["url"])
    assert len(study.trials) == 12
    stored = study.user_attrs[SPEC_ATTR]
    assert "storage" not in stored["study"]
    assert stored["data"]["root"] == str(setup["data"])  # the first creator's, absolute
    assert stored["train"]["epochs"] == 1
    assert (
        study.user_attrs[FINGERPRINT_ATTR]
        == load_preset("paper", [arg for arg in QUICK if arg != "--set"]).fingerprint()
    )


def test_create_takes_the_storage_from_the_environment(
    tmp_path: Path, setup: dict, storage_url: str
) -> None:
    assert setup["flags"][:2] == ["--storage", setup["url"]]
    no_gpu = {"CUDA_VISIBLE_DEVICES": ""}  # the hint names the workers this machine can run
    done = lrstudy(
        "create", *setup["flags"][2:], cwd=tmp_path, env={"LRSTUDY_STORAGE": storage_url, **no_gpu}
    )
    assert done.returncode == 0, done.stderr
    assert len(optuna.load_study(study_name="quick", storage=storage_url).trials) == 12
    assert not (tmp_path / "lrstudy.db").exists()  # the spec's default storage, unused
    hint = done.stdout.splitlines()[-1]
    if storage_url.startswith("sqlite"):
        assert hint == (
            f"start workers: lrstudy launch --storage '{storage_url}' --study quick --workers 1"
        )
    else:  # a masked URL would not work if pasted, and the password must not show
        password = storage_url.split(":")[2].split("@")[0]
        assert password not in done.stdout
        assert hint == (
            "start workers: LRSTUDY_STORAGE=<your URL> lrstudy launch --study quick --workers 1"
        )


def test_status_shows_waiting_and_failed_cells(tmp_path: Path, setup: dict) -> None:
    data = tmp_path / "moving"
    shutil.copytree(setup["data"], data)
    flags = [*setup["flags"], "--data", str(data), "--set", "worker.max_retries=1"]
    assert lrstudy("create", *flags).returncode == 0
    fresh = lrstudy("status", "--storage", setup["url"], "--study", "quick")
    assert fresh.returncode == 0, fresh.stderr
    lines = fresh.stdout.splitlines()
    assert lines[0] == "study quick: 0/12 complete, 0 running, 12 waiting, 0 failed"
    assert lines[1].split() == ["learning_rate", "seed", "state", "trial", "detail"]
    assert [line.split()[:3] for line in lines[2:14]] == [
        [lr, seed, "waiting"] for lr in ("0.1", "0.01", "0.001", "0.0001") for seed in "012"
    ]
    uid = study_uid(load_grid_study(setup["url"], "quick"))
    assert uid is not None
    folder = tmp_path / "artifacts" / f"quick-{uid[:8]}"
    assert lines[14:] == ["", f"study id {uid}, files in {folder}"]
    # The images vanish: every cell fails, is retried once, and fails for good.
    shutil.rmtree(data)
    worker = lrstudy(
        "worker", "--study", "quick", "--worker-id", "solo", env={"LRSTUDY_STORAGE": setup["url"]}
    )
    assert worker.returncode == 0, worker.stderr
    failed = lrstudy("status", "--storage", setup["url"], "--study", "quick")
    lines = failed.stdout.splitlines()
    assert lines[0] == "study quick: 0/12 complete, 0 running, 0 waiting, 12 failed"
    for line in lines[2:14]:
        assert line.split()[2] == "failed"
        assert "retries 1: " in line and str(data) in line and "(traceback: " in line
    assert lines[16].startswith("12 cells failed for good: ")
    retry = f"lrstudy retry --storage '{setup['url']}' --study quick"
    assert lines[17:] == [f"fix the cause, then: {retry}"]


def test_status_shows_a_running_cell_with_its_worker_and_epoch(setup: dict) -> None:
    assert lrstudy("create", *setup["flags"]).returncode == 0
    study = load_grid_study(setup["url"], "quick")
    stop = threading.Event()
    seen: list[str] = []

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("epochs", 5)
        trial.report(0.5, step=1)
        trial.report(0.75, step=2)
        seen.extend(
            lrstudy("status", "--storage", setup["url"], "--study", "quick").stdout.splitlines()
        )
        stop.set()
        return 0.75

    run_worker(study, objective, worker_id="probe", stop=stop)
    assert seen[0] == "study quick: 0/12 complete, 1 running, 11 waiting, 0 failed"
    (running,) = [line for line in seen[2:] if " running " in line]
    host = os.uname().nodename
    assert running.endswith(f"worker probe on {host}, epoch 2 of 5")
    after = lrstudy("status", "--storage", setup["url"], "--study", "quick").stdout
    assert after.splitlines()[0] == "study quick: 1/12 complete, 0 running, 11 waiting, 0 failed"
    assert "val_accuracy 0.7500" in after


@pytest.mark.slow
def test_four_worker_processes_finish_the_grid_exactly_once(setup: dict) -> None:
    assert lrstudy("create", *setup["flags"]).returncode == 0
    done = lrstudy(
        "launch", "--storage", setup["url"], "--study", "quick", "--workers", "4", timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exactly_once(setup["url"])
    for index in range(1, 5):
        assert f"[w{index} cpu] " in done.stderr
    assert "study quick: 12/12 complete, 0 running, 0 waiting, 0 failed" in done.stdout
    table = done.stdout.split("val_accuracy over seeds (sample SD):\n")[1].splitlines()
    assert table[0].split() == ["learning_rate", "complete", "mean", "sd", "diverged"]
    assert [row.split()[:2] for row in table[1:5]] == [
        [lr, "3/3"] for lr in ("0.1", "0.01", "0.001", "0.0001")
    ]
    hosts = {t.user_attrs["worker_id"] for t in complete_trials(setup["url"])}
    assert hosts <= {f"{os.uname().nodename}-w{index}" for index in range(1, 5)}


@pytest.mark.slow
@pytest.mark.postgres
def test_run_on_postgresql_finishes_the_grid_exactly_once(
    setup: dict, postgres_storage_url: str
) -> None:
    done = lrstudy("run", *setup["flags"], "--storage", postgres_storage_url, "--workers", "2",
                   timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exactly_once(postgres_storage_url)
    # Each epoch line names its worker (the launcher's prefix), trial, cell and epoch.
    line = re.compile(r"^\[(w\d) cpu\] .* INFO trial (\d+): cell .* epoch 1/1: loss ", re.M)
    epochs = line.findall(done.stderr)
    assert {worker for worker, _ in epochs} == {"w1", "w2"}
    assert sorted(int(trial) for _, trial in epochs) == list(range(12))
    password = postgres_storage_url.split(":")[2].split("@")[0]
    assert password not in done.stdout + done.stderr
    study = optuna.load_study(study_name="quick", storage=postgres_storage_url)
    assert password not in json.dumps(study.user_attrs)


@pytest.mark.slow
def test_an_interrupted_run_finishes_only_the_missing_cells_when_run_again(
    setup: dict,
) -> None:
    url = setup["url"]
    seeds = (0, 1)  # 8 cells: some finish before the signal, some after the second run
    flags = [*setup["flags"], "--set", f"grid.seed={list(seeds)}", "--set", "train.epochs=2",
             "--workers", "2"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "study", "run", *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a command
    )

    def first_cell_complete() -> bool:
        # Read-only: opening the file with Optuna here would race the run to create the tables.
        database = Path(url.removeprefix("sqlite:///"))
        if not database.exists():
            return False
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
                (done,) = connection.execute(
                    "SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'"
                ).fetchone()
        except sqlite3.OperationalError:  # the tables are not created yet
            return False
        return done >= 1

    try:
        wait_for(first_cell_complete, timeout_s=180, what="the first complete cell")
    finally:
        os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "interrupted by SIGINT" in out

    study = load_grid_study(url, "quick")
    states = cell_states(study)
    assert {state.state for state in states} <= {"complete", "waiting"}
    first_complete = {t.number for t in complete_trials(url)}
    assert 1 <= len(first_complete) < 8
    # A trial stopped by the signal is failed as interrupted and its cell queued again.
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert all(t.user_attrs.get("error") == "interrupted" for t in failed)

    again = lrstudy("run", *flags, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_exactly_once(url, seeds=seeds)
    assert first_complete <= {t.number for t in complete_trials(url)}
    # A third run finds nothing to do and starts no worker.
    third = lrstudy("run", *flags)
    assert third.returncode == 0
    assert "every cell of study 'quick' is complete already" in third.stderr
    assert "[w1 cpu]" not in third.stderr


def test_a_worker_started_while_the_database_is_down_waits_for_it(
    postgres_server: PostgresServer, setup: dict
) -> None:
    url = postgres_server.create_database()
    flags = [url if flag == setup["url"] else flag for flag in setup["flags"]]
    created = lrstudy("create", *flags, "--set", "grid.seed=[0]")
    assert created.returncode == 0, created.stderr
    postgres_server.stop()
    worker = subprocess.Popen(
        [sys.executable, "-m", "study", "worker", "--storage", url, "--study", "quick"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert worker.stderr is not None
        for line in worker.stderr:  # a Slurm array task that started before the server
            if "database unreachable while opening the study's database" in line:
                break
        postgres_server.start()
        _, rest = worker.communicate(timeout=300)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, rest[-3000:]
    assert len(complete_trials(url)) == 4
    assert postgres_server.password not in rest


def test_a_command_whose_database_is_down_exits_75_in_one_line() -> None:
    with closed_port() as port:
        url = f"postgresql://ana:s3cret-pw@127.0.0.1:{port}/lr?connect_timeout=3"
        status = lrstudy("status", "--storage", url, "--study", "quick")
    assert status.returncode == _exit.UNAVAILABLE  # not 2: running it again later can help
    assert status.stderr.startswith("lrstudy: error: ") and status.stderr.count("\n") == 1
    assert "check that the server runs" in status.stderr and "s3cret-pw" not in status.stderr


def test_a_command_that_loses_the_database_midway_exits_75_in_one_line(
    postgres_server: PostgresServer, setup: dict
) -> None:
    url = postgres_server.create_database()
    flags = [url if flag == setup["url"] else flag for flag in setup["flags"]]
    assert lrstudy("create", *flags, "--set", "grid.seed=[0]").returncode == 0
    with cut_on_lock(url, "trials") as cut:  # `status` stops on its first read of the trials
        status = subprocess.Popen(
            [sys.executable, "-m", "study", "status", "--storage", url, "--study", "quick"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            cut()
            _, err = status.communicate(timeout=60)
        finally:
            if status.poll() is None:
                status.kill()
                status.wait()
    assert status.returncode == _exit.UNAVAILABLE, err[-3000:]
    # Optuna may log a warning first (its read falls back to a second query); then our line.
    assert "Traceback" not in err, err[-3000:]
    last = err.splitlines()[-1]
    assert last.startswith("lrstudy: error: lost the connection to the study database ("), err
    assert "AdminShutdown: terminating connection due to administrator command" in last
    assert "run the same command again" in last and postgres_server.password not in err
    again = lrstudy("status", "--storage", url, "--study", "quick")
    assert again.returncode == 0 and "waiting" in again.stdout  # nothing was lost
