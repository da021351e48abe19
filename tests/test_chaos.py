"""Faults a long study meets, on real SQLite files and a real PostgreSQL server: nothing is lost.

Random SIGKILLs over a whole grid, a PostgreSQL restart, a "reboot" that kills every process of
``lrstudy run``, damaged cache and checkpoint files, a full disk, and the security promises
(servers on 127.0.0.1, no password anywhere a run writes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import random
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from storage import call_reconnecting, open_storage
from study.cli import main
from study.grid import (
    RetryStaleCell,
    create_grid_study,
    load_grid_study,
    retries_used,
    run_worker,
    study_folder,
    study_uid,
)
from study.spec import cell_key
from tests.postgres import PostgresServer
from tests.waiting import serve_on_a_free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
GRID = {"learning_rate": [0.1, 0.01, 0.001, 0.0001], "seed": [0, 1, 2]}
CELLS = sorted(cell_key({"learning_rate": lr, "seed": s}) for lr in GRID["learning_rate"]
               for s in GRID["seed"])  # fmt: skip
PHASES = ("caching", "epoch", "evaluation", "reporting")
_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["optuna", "storage", "study.grid", __name__])

# A small real protocol: small_cnn at 32 px on the test's own images.
QUICK = (
    "--set 'train.model=\"small_cnn\"' --set 'train.weights=\"none\"' --set train.image_size=32 "
    "--set train.eval_batch_size=32 --set 'data.split=\"kaggle\"' --set study.name=chaos "
    "--set worker.heartbeat_s=1 --set worker.grace_s=3"
)


# --- a resumable objective with phases, for the orchestration faults ---------------------------


@dataclass
class PhasedObjective:
    """A cell in the phases of a real one, each ``phase_s`` long, resumable per epoch.

    Progress (epochs done) goes to ``<folder>/progress/<cell>`` atomically after each epoch, as
    a checkpoint would; ``<folder>/events`` gets one line per try start and per finished epoch;
    ``<folder>/phase/<pid>`` says which trial and phase this process is in now.
    """

    folder: Path
    epochs: int = 3
    phase_s: float = 0.3

    def __call__(self, trial: optuna.Trial) -> float:
        params = {axis: trial.suggest_categorical(axis, values) for axis, values in GRID.items()}
        key = cell_key(params)
        progress = self.folder / "progress" / key
        done = int(progress.read_text()) if progress.exists() else 0
        self._event(f"start {key} {trial.number} {done + 1}")
        self._phase(trial, "caching")
        for epoch in range(done + 1, self.epochs + 1):
            self._phase(trial, "epoch")
            _write_atomic(progress, str(epoch))
            self._event(f"epoch {key} {trial.number} {epoch}")
            trial.report(epoch / 10, step=epoch)
        self._phase(trial, "evaluation")
        self._phase(trial, "reporting")
        trial.set_user_attr("history", list(range(1, self.epochs + 1)))
        # Not "reporting" any more: a kill from here on may find the trial complete.
        self._mark(trial, "returned")
        return params["learning_rate"]

    def _phase(self, trial: optuna.Trial, phase: str) -> None:
        self._mark(trial, phase)
        time.sleep(self.phase_s)

    def _mark(self, trial: optuna.Trial, phase: str) -> None:
        _write_atomic(self.folder / "phase" / str(os.getpid()), f"{trial.number} {phase}")

    def _event(self, line: str) -> None:
        with open(self.folder / "events", "a") as events:
            events.write(line + "\n")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _work(storage: BaseStorage, worker_id: str, objective: PhasedObjective) -> None:
    logging.basicConfig(filename=objective.folder / f"log-{worker_id}", level=logging.INFO)
    study = call_reconnecting(lambda: load_grid_study(storage, "lr"), what="loading")
    run_worker(study, objective, worker_id=worker_id, poll_s=0.2)


class Crew:
    """Worker processes on one study; a killed worker is replaced, as the launcher does."""

    def __init__(self, storage: BaseStorage, objective: PhasedObjective, size: int) -> None:
        self.storage, self.objective = storage, objective
        self.processes: dict[int, multiprocessing.Process] = {}
        self.started = 0
        for _ in range(size):
            self.start()

    def start(self) -> None:
        self.started += 1
        process = _CTX.Process(
            target=_work, args=(self.storage, f"w{self.started}", self.objective)
        )
        process.start()
        self.processes[process.pid] = process  # type: ignore[index]

    def in_phase(self, phase: str) -> list[tuple[int, int]]:
        """(pid, trial number) of the live workers now in ``phase``."""
        found = []
        for pid, process in self.processes.items():
            now = self.phase_of(pid) if process.is_alive() else None
            if now is not None and now[1] == phase:
                found.append((pid, now[0]))
        return found

    def phase_of(self, pid: int) -> tuple[int, str] | None:
        """(trial number, phase) that worker ``pid`` last said it is in; None before any."""
        marker = self.objective.folder / "phase" / str(pid)
        if not marker.exists():
            return None
        number, phase = marker.read_text().split()
        return int(number), phase

    def stop_in(self, phase: str, rng: random.Random) -> tuple[int, int]:
        """SIGSTOP a worker the seeded ``rng`` picks among those in ``phase``: (pid, trial).

        Its phase is read again once it is stopped: one that moved on meanwhile continues,
        and another is picked."""
        stopped: list[tuple[int, int]] = []

        def one_stopped() -> bool:
            candidates = self.in_phase(phase)
            if candidates:
                pid, number = rng.choice(candidates)
                if _stopped_if(pid, lambda: self.phase_of(pid) == (number, phase)):
                    stopped.append((pid, number))
            return bool(stopped)

        wait_for(one_stopped, what=f"a worker in phase {phase}", poll_s=0.01)
        return stopped[0]

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        self.processes[pid].join(10)
        (self.objective.folder / "phase" / str(pid)).unlink()
        self.start()

    def join(self, timeout_s: float) -> list[int | None]:
        deadline = time.monotonic() + timeout_s
        for process in self.processes.values():
            process.join(max(0.1, deadline - time.monotonic()))
        return [p.exitcode for p in self.processes.values()]


def _stopped_if(pid: int, condition: Callable[[], bool]) -> bool:
    """SIGSTOP ``pid`` and keep it stopped if ``condition`` holds then; else let it go on."""
    os.kill(pid, signal.SIGSTOP)
    if condition():
        return True
    os.kill(pid, signal.SIGCONT)
    return False


def _kill_schedule(crew: Crew, rng: random.Random, kills: int) -> list[tuple[int, str]]:
    """Kill ``kills`` workers, each in a phase the seeded ``rng`` picks (every phase once
    first), at a seeded random moment; returns (trial number, phase) of each kill."""
    phases = list(PHASES)
    rng.shuffle(phases)
    phases += [rng.choice(PHASES) for _ in range(kills - len(phases))]
    killed: list[tuple[int, str]] = []
    for phase in phases:
        time.sleep(rng.uniform(0.0, 0.4))
        pid, number = crew.stop_in(phase, rng)
        crew.kill(pid)
        killed.append((number, phase))
    return killed


def _trials(storage: BaseStorage) -> list[optuna.trial.FrozenTrial]:
    return call_reconnecting(
        lambda: optuna.load_study(study_name="lr", storage=storage).get_trials(), what="reading"
    )


def _assert_every_cell_once(trials: list[optuna.trial.FrozenTrial]) -> None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(cell_key(t.params) for t in complete) == CELLS
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]


def _assert_no_epoch_redone(folder: Path, epochs: int) -> None:
    """Every try of a cell starts right after the last epoch any earlier try finished, and
    across all tries each epoch finished exactly once: a kill cost at most the epoch it hit."""
    finished: dict[str, list[int]] = defaultdict(list)
    for line in (folder / "events").read_text().splitlines():
        kind, key, _number, epoch = line.split()
        if kind == "start":
            assert int(epoch) == len(finished[key]) + 1, (key, finished[key], epoch)
        else:
            finished[key].append(int(epoch))
    assert finished == {key: list(range(1, epochs + 1)) for key in CELLS}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("storage_url", "workers", "seed"),
    [("sqlite", 12, 8), ("postgresql", 4, 88)],
    indirect=["storage_url"],
)
def test_seeded_sigkills_over_a_grid_lose_no_cell_and_at_most_one_epoch(
    storage_url: str, workers: int, seed: int, tmp_path: Path
) -> None:
    # A grace of 5 heartbeats: on 2 busy cores a live worker's beat can be seconds late.
    storage = open_storage(
        storage_url, heartbeat_s=1, grace_s=5, stale_trial_callback=RetryStaleCell()
    )
    create_grid_study(storage, "lr", GRID, max_retries=8)
    objective = PhasedObjective(tmp_path)
    crew = Crew(storage, objective, workers)
    killed = _kill_schedule(crew, random.Random(seed), kills=6)
    exit_codes = crew.join(120)
    assert exit_codes.count(-signal.SIGKILL) == 6 and exit_codes.count(0) == workers, exit_codes
    assert {phase for _, phase in killed} == set(PHASES)
    trials = _trials(storage)
    _assert_every_cell_once(trials)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    logs = "".join(path.read_text() for path in tmp_path.glob("log-*"))
    assert sorted(t.number for t in failed) == sorted(number for number, _ in killed), logs
    # Each kill was seen as a lost worker (no error of the objective) and spent one retry.
    assert all("error" not in t.user_attrs for t in failed)
    complete = {cell_key(t.params): t for t in trials if t.state == TrialState.COMPLETE}
    kills_per_cell = Counter(cell_key(t.params) for t in failed)
    assert {key: retries_used(t) for key, t in complete.items()} == {
        key: kills_per_cell[key] for key in CELLS
    }
    _assert_no_epoch_redone(tmp_path, objective.epochs)
    assert "database is locked" not in logs
    assert "Traceback" not in logs


@pytest.mark.slow
def test_postgresql_restart_with_a_worker_killed_meanwhile_leaves_no_trial_running(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    # The outage (about 4 s, twice that under load) stays within the grace period, so live
    # trials are not failed as stale; the killed one is failed once the grace period has passed.
    storage = open_storage(
        postgres_server.create_database(),
        heartbeat_s=1,
        grace_s=20,
        stale_trial_callback=RetryStaleCell(),
    )
    create_grid_study(storage, "lr", GRID)
    objective = PhasedObjective(tmp_path, phase_s=0.25)
    crew = Crew(storage, objective, 3)
    # Stopped, so that it cannot finish its cell while the server stops.
    doomed, lost = crew.stop_in("epoch", random.Random(0))
    postgres_server.stop()
    try:
        os.kill(doomed, signal.SIGKILL)  # dies while the database is away
        crew.processes[doomed].join(10)
        time.sleep(2)
    finally:
        postgres_server.start()
    assert sorted(crew.join(180)) == [-signal.SIGKILL, 0, 0]
    trials = _trials(storage)
    _assert_every_cell_once(trials)
    failed = {t.number: t for t in trials if t.state == TrialState.FAIL}
    assert lost in failed and "error" not in failed[lost].user_attrs  # failed after the grace
    # Trials whose objective touched the database during the outage failed with a clear
    # reason, and were retried like any other failure.
    for number, trial in failed.items():
        if number != lost:
            assert trial.user_attrs["error"].startswith("database connection lost: "), (
                trial.user_attrs
            )
    logs = "".join(path.read_text() for path in tmp_path.glob("log-*"))
    assert "database unreachable" in logs


# --- the real objective: checkpoint resume, a damaged checkpoint, a full disk ---------------


def _lrstudy(*args: str, timeout: float = 300, **popen: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, **popen,  # type: ignore[arg-type]
    )  # fmt: skip


def _quick_flags(tmp_path: Path, data: Path, cache: str, url: str, extra: str = "") -> list[str]:
    return shlex.split(
        f"--storage {url} --data {data} {QUICK} --set data.cache_dir={cache} "
        f"--set study.artifacts={tmp_path / 'artifacts'} {extra}"
    )


def _history(trial: optuna.trial.FrozenTrial) -> list[tuple[int, float]]:
    history = trial.user_attrs.get("history") or {"epoch": [], "seconds": []}
    return list(zip(history["epoch"], history["seconds"], strict=True))


@pytest.mark.slow
def test_a_real_cell_killed_mid_epoch_resumes_after_its_last_finished_epoch(
    tmp_path: Path, dataset_dir: Path, cache_dir: str
) -> None:
    from trainer._checkpoint import load_checkpoint
    from trainer._train import CHECKPOINT_FILE

    url = f"sqlite:///{tmp_path / 'study.db'}"
    one_cell = "--set 'grid.learning_rate=[0.01]' --set 'grid.seed=[0]' --set train.epochs=40"
    assert main(["create", *_quick_flags(tmp_path, dataset_dir, cache_dir, url, one_cell)]) == 0
    worker = ["worker", "--storage", url, "--study", "chaos"]
    first = subprocess.Popen(
        [sys.executable, "-m", "study", *worker, "--worker-id", "doomed"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    study = optuna.load_study(study_name="chaos", storage=url)
    folder = study_folder(tmp_path / "artifacts", "chaos", study_uid(study))
    checkpoint = folder / "learning_rate=0.01__seed=0" / CHECKPOINT_FILE

    def three_epochs_on_disk() -> bool:
        # The trainer reports an epoch as soon as its checkpoint write has started (in the
        # background); kill once that write is done too, early in the next epoch.
        saved = load_checkpoint(checkpoint) if checkpoint.exists() else None
        reported = len(_history(study.get_trials()[0]))
        return saved is not None and len(saved.state["history"]) == reported >= 3

    def stopped_with_three_epochs_on_disk() -> bool:
        # Checked again once the worker is stopped: it may have reported an epoch meanwhile.
        return three_epochs_on_disk() and _stopped_if(first.pid, three_epochs_on_disk)

    try:
        wait_for(stopped_with_three_epochs_on_disk, timeout_s=240, what="3 epochs checkpointed")
    finally:
        first.kill()
        first.wait()
    (killed,) = study.get_trials()
    finished = _history(killed)
    assert killed.state == TrialState.RUNNING and 3 <= len(finished) < 40
    second = _lrstudy(*worker, "--worker-id", "survivor")
    assert second.returncode == 0, second.stderr[-3000:]
    killed, resumed = study.get_trials()
    assert (killed.state, resumed.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert resumed.system_attrs["retry_history"] == [killed.number]
    # Every epoch the killed try finished is in the result as it was (its own duration, not
    # a retrained one's), and the resumed try trained the rest: at most one epoch was lost.
    done = _history(resumed)
    assert [epoch for epoch, _ in done] == list(range(1, 41))
    assert done[: len(finished)] == finished
    assert f"resuming after epoch {len(finished)}" in second.stderr


@pytest.fixture(scope="module")
def keras_loaded() -> None:
    """The in-process tests below train real cells; Keras loads once for all of them."""
    import keras  # noqa: F401


def _in_process_cell(tmp_path: Path, data: Path, cache: str, url: str, artifacts: Path):
    """The study of one real cell, and a worker running it in this process."""
    from study.grid import CellObjective, create_from_spec
    from study.spec import load_preset

    overrides = [arg for arg in shlex.split(QUICK) if arg != "--set"]
    spec = load_preset(
        "paper",
        [*overrides, "grid.learning_rate=[0.01]", "grid.seed=[0]", "train.epochs=2"],
    ).with_locations(storage=url, data_root=str(data), cache_dir=cache, artifacts=str(artifacts))
    storage = open_storage(url, heartbeat_s=1, grace_s=3, stale_trial_callback=RetryStaleCell())
    study, _ = create_from_spec(storage, spec)

    def work(after_trial: Callable[[optuna.Study], None] | None = None) -> None:
        run_worker(
            load_grid_study(storage, "chaos"),
            CellObjective(spec),
            worker_id="w",
            poll_s=0.2,
            after_trial=after_trial,
        )

    return study, work


@pytest.mark.slow
def test_damaged_cache_and_checkpoint_are_detected_and_never_used(
    tmp_path: Path,
    dataset_dir: Path,
    cache_dir: str,
    keras_loaded: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from trainer._cache import open_pool_cache
    from trainer._scan import scan
    from trainer._train import CHECKPOINT_FILE

    found = scan(str(dataset_dir))
    records, root = found.records, found.root
    clean = open_pool_cache(root, records, 32, cache_dir)
    pixels = np.array(clean.images)
    npy = Path(clean.path)
    size = npy.stat().st_size
    for damage in ("flip", "truncate"):
        raw = bytearray(npy.read_bytes())
        if damage == "flip":  # same size, one pixel changed: only the checksum can tell
            raw[size - 5000] ^= 0xFF
            npy.write_bytes(bytes(raw))
        else:
            npy.write_bytes(bytes(raw[: size // 2]))
        caplog.clear()
        again = open_pool_cache(root, records, 32, cache_dir)
        assert again.built, damage
        assert "is damaged" in caplog.text
        np.testing.assert_array_equal(np.array(again.images), pixels)

    # A checkpoint cut short (as by a crash mid-copy) is ignored: the cell trains from epoch 1.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, work = _in_process_cell(tmp_path, dataset_dir, cache_dir, url, tmp_path / "art")
    work()
    (first,) = study.get_trials()
    checkpoint = Path(first.user_attrs["out_dir"]) / CHECKPOINT_FILE
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    (Path(first.user_attrs["out_dir"]) / ".checkpoint.npz.1234.tmp").write_bytes(b"PK\3\4")
    storage = study._storage
    retry = storage.create_new_trial(
        study._study_id,
        template_trial=optuna.trial.create_trial(
            state=TrialState.WAITING, system_attrs=first.system_attrs
        ),
    )
    caplog.clear()
    with caplog.at_level(logging.INFO):
        work()
    assert storage.get_trial(retry).state == TrialState.COMPLETE
    assert "ignoring damaged checkpoint" in caplog.text
    assert "resuming after epoch" not in caplog.text
    assert [epoch for epoch, _ in _history(storage.get_trial(retry))] == [1, 2]


@contextlib.contextmanager
def _small_disk(folder: Path) -> Iterator[Callable[[], None]]:
    """``folder`` on a full filesystem; the yielded function frees it.

    As root: a tmpfs of 1 MiB filled by a ballast file. Elsewhere (no mount allowed): the
    next checkpoint's temporary file of this process is a link to /dev/full, which answers
    every write with ENOSPC, as a full disk does.
    """
    folder.mkdir(parents=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True
    ).returncode == 0  # fmt: skip
    ballast = folder / "ballast"
    try:
        if mounted:
            with open(ballast, "wb", buffering=0) as file, contextlib.suppress(OSError):
                while True:
                    file.write(b"\0" * 4096)
        yield lambda: ballast.unlink(missing_ok=True)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
def test_a_full_disk_fails_the_trial_clearly_then_the_retry_completes(
    storage_url: str, tmp_path: Path, dataset_dir: Path, cache_dir: str, keras_loaded: None
) -> None:
    artifacts = tmp_path / "small-disk"
    with _small_disk(artifacts) as free_space:
        study, work = _in_process_cell(tmp_path, dataset_dir, cache_dir, storage_url, artifacts)
        if not (artifacts / "ballast").exists():
            folder = study_folder(artifacts, "chaos", study_uid(study))
            out = folder / cell_key({"learning_rate": 0.01, "seed": 0})
            out.mkdir(parents=True)
            (out / f".checkpoint.npz.{os.getpid()}.tmp").symlink_to("/dev/full")
        work(after_trial=lambda _study: free_space())
    failed, retried = study.get_trials()
    assert (failed.state, retried.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert re.fullmatch(
        r"OSError: \[Errno 28\] cannot write checkpoint .*/checkpoint\.npz: "
        r"No space left on device",
        failed.user_attrs["error"],
    ), failed.user_attrs["error"]
    assert retried.system_attrs["retry_history"] == [failed.number] and retries_used(retried) == 1
    if storage_url.startswith("sqlite"):
        with sqlite3.connect(storage_url.removeprefix("sqlite:///")) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# --- a reboot, and what a run must never reveal ----------------------------------------------


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:
                    found.add(address)
    return found


def _database_text(url: str) -> str:
    """Every row of every table of a PostgreSQL database, as text."""
    import psycopg

    conninfo = re.sub(r"^postgresql://", "postgresql://", url)
    rows = []
    with psycopg.connect(conninfo) as connection:
        tables = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        for (table,) in tables:
            rows += connection.execute(f'SELECT * FROM "{table}"').fetchall()
    return repr(rows)


@pytest.mark.slow
def test_a_reboot_mid_run_is_finished_by_running_again_and_no_password_leaks(
    tmp_path: Path, dataset_dir: Path, cache_dir: str, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database()
    password = postgres_server.password
    grid = "--set 'grid.learning_rate=[0.1, 0.001]' --set 'grid.seed=[0, 1]' --set train.epochs=3"
    grid += " --set worker.grace_s=8"  # two real workers on two loaded cores: beats can lag
    flags = ["run", *_quick_flags(tmp_path, dataset_dir, cache_dir, url, grid), "--workers", "2"]
    run = subprocess.Popen(
        [sys.executable, "-m", "study", *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    titles: list[str] = []
    try:
        storage = open_storage(url)

        def some_complete_some_running() -> bool:
            titles.extend(_worker_command_lines())
            try:
                trials = optuna.load_study(study_name="chaos", storage=storage).get_trials()
            except KeyError:
                return False
            states = Counter(t.state for t in trials)
            return states[TrialState.COMPLETE] >= 1 and states[TrialState.RUNNING] >= 1

        wait_for(some_complete_some_running, timeout_s=240, what="a complete and a running cell")
    finally:
        # Every process of the run at once: the launcher and its workers, which run in
        # sessions of their own (so that a terminal's Ctrl-C reaches only the launcher). All
        # are stopped first: a launcher's death sends its workers SIGTERM, which they would
        # answer by queuing their cells again, as after a Ctrl-C, not as after a reboot.
        os.kill(run.pid, signal.SIGSTOP)
        processes = [run.pid, *_descendants(run.pid)]
        for sent in (signal.SIGSTOP, signal.SIGKILL):
            for pid in processes:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sent)
    out, err = run.communicate(timeout=30)
    logs = out + err
    trials = optuna.load_study(study_name="chaos", storage=storage).get_trials()
    lost = {t.number for t in trials if t.state == TrialState.RUNNING}
    assert lost and titles

    again = _lrstudy(*flags)
    assert again.returncode == 0, again.stderr[-3000:]
    logs += again.stdout + again.stderr
    trials = optuna.load_study(study_name="chaos", storage=storage).get_trials()
    complete = Counter((t.params["learning_rate"], t.params["seed"])
                       for t in trials if t.state == TrialState.COMPLETE)  # fmt: skip
    assert sorted(complete) == [(0.001, 0), (0.001, 1), (0.1, 0), (0.1, 1)]
    assert set(complete.values()) == {1}
    assert {t.number for t in trials if t.state == TrialState.FAIL} == lost
    assert "Traceback" not in logs

    # No password: not in the logs, the worker command lines, the database, the exports or
    # the artifacts; the dashboard listens on 127.0.0.1 only.
    out_dir = tmp_path / "export"  # trials.csv, summary.json and summary.md
    exports = [_lrstudy("export", "--storage", url, "--study", "chaos", *options)
               for options in (["--format", "json"], ["--out", str(out_dir)])]  # fmt: skip
    assert [done.returncode for done in exports] == [0, 0]
    written = [path.read_bytes().decode("utf-8", "replace")
               for folder in (out_dir, tmp_path / "artifacts")
               for path in folder.rglob("*") if path.is_file()]  # fmt: skip
    texts = [logs, *titles, _database_text(url), *written,
             *(done.stdout + done.stderr for done in exports)]  # fmt: skip
    assert all(password not in text for text in texts)
    assert _dashboard_binds_loopback_only(url)


def _descendants(root: int) -> list[int]:
    """Every process below ``root``, from the parent ids in /proc."""
    parents: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            stat = (entry / "stat").read_text()
            parents[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    found, todo = [], [root]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _worker_command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "study worker" in command:
                lines.append(command)
    return lines


def _dashboard_binds_loopback_only(url: str) -> bool:
    def start(port: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "study", "dashboard", "--storage", url, "--port", str(port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    server, port = serve_on_a_free_port(
        start, lambda port: bool(_listening_addresses(port)), what="the dashboard to listen"
    )
    try:
        return _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
    finally:
        server.terminate()
        server.communicate(timeout=10)


def test_serving_defaults_are_loopback() -> None:
    from study.cli import build_parser

    parsed = build_parser().parse_args(["dashboard", "--storage", "sqlite:///x.db"])
    assert parsed.host == "127.0.0.1"
    assert json.dumps(vars(parsed), default=str).count("0.0.0.0") == 0
