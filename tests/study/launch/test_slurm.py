"""``lrstudy slurm``: the job array's script, its checks, and a study run on a real Slurm.

The cluster tests use the throwaway single-node cluster of ``tests/slurm.py`` (``-p
tests.slurm``): real sbatch, scancel and scontrol, GPU stand-ins as ``gres/gpu``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import optuna
import pytest

from storage import StorageError
from storage._filesystem import check_sqlite_local, filesystem_type, sqlite_path
from study.cli import main
from study.grid import study_folder, study_uid
from study.launch._slurm import (
    TAG_ENV,
    SlurmPlan,
    render_script,
    sbatch_environment,
    submit,
    time_seconds,
)
from tests.conftest import write_dataset
from tests.slurm import SlurmCluster
from tests.study.cli import test_study
from trainer import InputError

ROOT = Path(__file__).resolve().parents[3]
# A 4 x 3 grid of cells that train in seconds on a CPU, as the CLI tests make it.
QUICK = [
    *test_study.QUICK,
    # Only a safety net: a cell interrupted as designed is re-queued at once, not found stale.
    "--set", "worker.heartbeat_s=2",
    "--set", "worker.grace_s=30",  # wide: four tasks share two loaded cores
]  # fmt: skip


MOUNTS = textwrap.dedent(
    """\
    /dev/vda / ext4 rw,relatime 0 0
    proc /proc proc rw 0 0
    fs1:/export/home /home nfs4 rw,vers=4.2 0 0
    /dev/vdb /home/local\\040disk ext4 rw 0 0
    mds@tcp:/scratch /scratch lustre rw 0 0
    tmpfs /scratch tmpfs rw 0 0
    //nas/share /mnt/nas cifs rw 0 0
    """
)


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed test's jobs are cancelled, so that they fail no later test of the session."""
    yield
    cluster = request.node.funcargs.get("slurm_cluster")
    if cluster is not None:
        cluster.cancel_all()


def lrstudy(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run a command in this process as ``lrstudy`` would: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def create_study(
    tmp_path: Path, epochs: int = 1, seeds: Sequence[int] = (0, 1, 2), extra: Sequence[str] = ()
) -> str:
    """A quick study (4 rates x ``seeds``) made with ``lrstudy create``, as a user would, with
    ``extra`` options; its storage URL."""
    data = write_dataset(tmp_path / "data").root
    url = f"sqlite:///{tmp_path / 'study.db'}"
    argv = [
        sys.executable, "-m", "study", "create", "--storage", url, "--data", str(data), *QUICK,
        "--set", f"train.epochs={epochs}", "--set", f"grid.seed={list(seeds)}",
        "--set", f"data.cache_dir={tmp_path / 'cache'}",
        "--set", f"study.artifacts={tmp_path / 'artifacts'}", *extra,
    ]  # fmt: skip
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return url


def slurm_folder(tmp_path: Path, url: str) -> Path:
    """Where ``lrstudy slurm`` keeps the quick study's scripts and logs: in the study's folder."""
    study = optuna.load_study(study_name="quick", storage=url)
    return study_folder(tmp_path / "artifacts", "quick", study_uid(study)) / "slurm"


def tagged_processes(cluster: SlurmCluster) -> list[int]:
    """Processes of this cluster's tasks still alive: a launcher or a worker of some task."""
    marks = (f"{TAG_ENV}=".encode(), f"SLURM_CONF={cluster.conf}\0".encode())
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if all(mark in environ for mark in marks):
                found.append(int(entry.name))
    return found


# --- the file system check (a faked mount table, not a faked file system) ---------------------


def test_filesystem_type_takes_the_longest_mount_point_and_decodes_escapes() -> None:
    assert filesystem_type("/home/alice/study.db", MOUNTS) == "nfs4"
    assert filesystem_type("/home", MOUNTS) == "nfs4"
    assert filesystem_type("/homework/x.db", MOUNTS) == "ext4"  # a prefix of the name only
    assert filesystem_type("/home/local disk/x.db", MOUNTS) == "ext4"  # \040 is a space
    assert filesystem_type("/scratch/x.db", MOUNTS) == "tmpfs"  # the later mount is on top
    assert filesystem_type("/mnt/nas/a/b.db", MOUNTS) == "cifs"
    assert filesystem_type("relative.db", "/dev/vda / ext4 rw 0 0\n") == "ext4"
    assert filesystem_type("/x", "") == ""


@pytest.mark.parametrize("kind", ["nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3"])
def test_sqlite_on_a_network_file_system_is_refused_in_one_line(kind: str) -> None:
    mounts = f"/dev/vda / ext4 rw 0 0\nserver:/x /shared {kind} rw 0 0\n"
    with pytest.raises(StorageError) as raised:
        check_sqlite_local("sqlite:////shared/lab/study.db", mounts)
    message = str(raised.value)
    assert "\n" not in message
    assert f"on a {kind} file system" in message
    assert "PostgreSQL" in message
    assert "/shared/lab/study.db" in message


def test_local_sqlite_and_postgresql_pass() -> None:
    mounts = "/dev/vda / ext4 rw 0 0\nserver:/x /shared nfs4 rw 0 0\n"
    check_sqlite_local("sqlite:////tmp/study.db", mounts)
    check_sqlite_local("/tmp/study.db", mounts)
    check_sqlite_local("postgresql://lab:secret@db:5432/lrstudy", mounts)
    assert sqlite_path("sqlite:///rel/x.db?timeout=30") == "rel/x.db"
    assert sqlite_path("sqlite+pysqlite:////abs/x.db") == "/abs/x.db"
    assert sqlite_path("postgresql://h/db") is None
    assert sqlite_path("sqlite://") is None


@pytest.mark.parametrize(
    "command",
    [["slurm", "--array", "2"], ["worker"], ["launch", "--workers", "2"]],
    ids=["slurm", "worker", "launch"],
)
def test_sqlite_on_a_network_file_system_is_refused_by_each_command(
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The mount table says tmp_path is an NFS export; nothing else about the machine changes.
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nfs1:/export {tmp_path} nfs4 rw 0 0\n")
    monkeypatch.setattr("storage._filesystem.MOUNTS_FILE", str(mounts))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    code, out, err = lrstudy([command[0], "--storage", url, "--study", "s", *command[1:]], capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("lrstudy: error: the SQLite database")
    assert "nfs4 file system" in err and "PostgreSQL" in err
    assert not (tmp_path / "study.db").exists()


# --- the plan and its script ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"array": 0}, ["--array must be an integer >= 1; got 0"]),
        ({"gpus_per_task": -1}, ["--gpus-per-task must be an integer >= 0"]),
        ({"per_gpu": 0}, ["--per-gpu must be an integer >= 1"]),
        ({"per_gpu": 2}, ["--per-gpu 2 needs GPUs", "--gpus-per-task G"]),
        ({"time": "2h"}, ["--time must be a Slurm time (MM, MM:SS, HH:MM:SS, D-HH,", "'2h'"]),
        ({"time": "1-25:00:00"}, ["--time must be a Slurm time"]),
        ({"time": "00:61:00"}, ["--time must be"]),
        ({"time": "1:60"}, ["--time must be"]),
        ({"time": "00:01:00"}, ["not longer than --signal-seconds 120"]),
        ({"signal_s": 0}, ["--signal-seconds must be an integer >= 1"]),
        ({"partition": "gpu a100"}, ["--partition must be a Slurm name"]),
        ({"sbatch_args": ("qos=low",)}, ["must start with an option"]),
        ({"sbatch_args": ("--export=NONE",)}, ["$LRSTUDY_STORAGE", "--export=ALL"]),
        ({"sbatch_args": ("--array=0-99",)}, ["pass --array N"]),
        ({"sbatch_args": ("--signal=TERM@60",)}, ["early SIGTERM", "--signal-seconds S"]),
        ({"sbatch_args": ("-o", "/tmp/x.log")}, ["task logs", "--artifacts DIR"]),
        ({"sbatch_args": ("--no-requeue",)}, ["requeue", "leave it out"]),
        ({"sbatch_args": ("-t", "720")}, ["the time limit", "pass --time"]),
        ({"sbatch_args": ("-t12:00",)}, ["the time limit", "pass --time"]),  # attached value
        ({"sbatch_args": ("--arr=0-9",)}, ["the task count"]),  # a prefix, as getopt reads it
        ({"sbatch_args": ("--gres=gpu:1",)}, ["each task's GPUs", "--gpus-per-task G"]),
        (
            {"gpus_per_task": 1, "sbatch_args": ("--gres=lscratch:10",)},
            ["would replace the script's --gres=gpu:1"],
        ),
        ({"time": "0"}, ["means no time limit to Slurm; leave --time out"]),
        ({"sbatch_args": ('--comment="x"',)}, ["holds a quote"]),
    ],
)
def test_bad_plans_are_refused_in_one_line_naming_the_flag(options: dict, words: list) -> None:
    with pytest.raises(InputError) as raised:
        SlurmPlan(**{"study": "s", "array": 2, "log_dir": "/logs", **options})
    message = str(raised.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_a_bad_flag_is_one_line_before_any_database_is_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'study.db'}"  # would fail if it were opened
    argv = ["slurm", "--storage", url, "--study", "s", "--array", "2", "--time", "2h"]
    code, out, err = lrstudy(argv, capsys)
    assert (code, out) == (2, "")
    assert err == (
        "lrstudy: error: --time must be a Slurm time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
        "D-HH:MM:SS); got '2h'. Example: --time 12:00:00 or --time 2-00:00:00.\n"
    )


def test_sbatch_variables_of_the_scripts_own_options_are_left_out() -> None:
    """sbatch lets SBATCH_* variables override #SBATCH lines; those of options the script
    leaves to the site (a default QOS or account) still apply."""
    plan = SlurmPlan(
        study="s", array=2, log_dir="/logs", time="01:00:00", sbatch_args=("-p", "gpu")
    )
    env = {
        "SBATCH_EXPORT": "NONE", "SBATCH_ARRAY_INX": "0-0", "SBATCH_SIGNAL": "TERM@10",
        "SBATCH_NO_REQUEUE": "1", "SBATCH_TIMELIMIT": "5", "SBATCH_ERROR": "/tmp/e",
        "SBATCH_PARTITION": "cpu", "SBATCH_QOS": "low", "SBATCH_ACCOUNT": "lab", "HOME": "/h",
    }  # fmt: skip
    kept, dropped = sbatch_environment(plan, env)
    assert kept == {"SBATCH_QOS": "low", "SBATCH_ACCOUNT": "lab", "HOME": "/h"}
    assert dropped == sorted(set(env) - set(kept))
    # A --qos of the user's own (after --, short or long) wins over the site's default too.
    for given in (("--qos=high",), ("-qhigh",)):
        plan = SlurmPlan(study="s", array=2, log_dir="/logs", sbatch_args=given)
        assert "SBATCH_QOS" in sbatch_environment(plan, env)[1]
    # Other generic resources pass on a CPU task.
    SlurmPlan(study="s", array=2, log_dir="/logs", sbatch_args=("--gres=lscratch:10",))


def test_time_formats() -> None:
    """Every format sbatch's --time takes (sbatch(1))."""
    assert time_seconds("00:02:01") == 121
    assert time_seconds("48:00:00") == 48 * 3600
    assert time_seconds("2-01:00:00") == 49 * 3600
    assert time_seconds("90") == 90 * 60  # minutes
    assert time_seconds("90:30") == 90 * 60 + 30  # minutes:seconds
    assert time_seconds("2-01") == 49 * 3600  # days-hours
    assert time_seconds("2-01:30") == 49 * 3600 + 30 * 60  # days-hours:minutes


def test_dry_run_prints_the_script_without_the_url_and_submits_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = create_study(tmp_path)
    folder = slurm_folder(tmp_path, url)
    argv = ["slurm", "--storage", url, "--study", "quick", "--array", "3", "--dry-run"]
    code, script, err = lrstudy([*argv, "--time", "04:00:00", "--", "--qos", "low"], capsys)
    assert code == 0, err
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for line in (
        "#SBATCH --array=0-2",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:TERM@120",
        "#SBATCH --export=ALL",
        "#SBATCH --time=04:00:00",
        "#SBATCH --qos low",
        f'#SBATCH --output="{folder}/%A_%a.log"',
        "slots=(--workers 1)",  # G = 0: one CPU worker per task
    ):
        assert line in lines, line
    assert not any("--gres" in line for line in lines)
    launch = next(line for line in lines if " launch " in line)
    assert launch.endswith(' launch "${slots[@]}" --study quick &')
    assert "--storage" not in script
    assert str(tmp_path / "study.db") not in script and "sqlite" not in script
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    assert folder.name == "slurm" and folder.parent.name.startswith("quick-")
    assert not folder.exists()  # nothing saved
    assert "the study is in SQLite: every task must run on this machine" in caplog.text
    assert "password" not in caplog.text

    # A password in the environment would be kept with the job: said, not silently sent.
    monkeypatch.setenv("PGPASSWORD", "secret")
    code, script, err = lrstudy([*argv, "--gpus-per-task", "2", "--per-gpu", "2"], capsys)
    assert "which Slurm keeps with the job; put it in ~/.pgpass" in caplog.text
    assert "secret" not in caplog.text + script + err
    assert code == 0, err
    assert "#SBATCH --gres=gpu:2" in script.splitlines()
    assert "slots=(--gpus all --per-gpu 2)" in script


def test_the_weights_are_fetched_on_the_login_node_before_anything_is_submitted(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    closed_origin: str,
) -> None:
    """Compute nodes often have no internet: unreachable weights end here, in one line, not
    in every cell of every task."""
    extra = ["--set", "train.model=inception_v3", "--set", "train.image_size=75"]
    url = create_study(tmp_path, extra=[*extra, "--set", "train.weights=imagenet"])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("LRSTUDY_WEIGHTS_ORIGIN", closed_origin)
    argv = ["slurm", "--storage", url, "--study", "quick", "--array", "2"]
    code, out, err = lrstudy(argv, capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "cannot download" in err and "train.weights=none" in err
    assert not slurm_folder(tmp_path, url).exists()  # no script saved, nothing submitted


def test_script_quotes_what_it_passes_on() -> None:
    plan = SlurmPlan(
        study="lab's $HOME",
        array=1,
        log_dir="/shared/100%/logs",
        sbatch_args=("--comment", "two words", "--mem=8G"),
        launch_args=("--data", "/data/chest x-ray"),
    )
    script = render_script(plan)
    assert '#SBATCH --comment "two words"' in script
    assert "#SBATCH --mem=8G" in script
    assert '#SBATCH --output="/shared/100%%/logs/%A_%a.log"' in script
    assert "--study 'lab'\"'\"'s $HOME' --data '/data/chest x-ray' &" in script
    assert "#SBATCH --job-name=lrstudy-lab_s__HOME" in script


def test_a_missing_sbatch_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError) as raised:
        submit(tmp_path / "x.sbatch", os.environ, sbatch=str(tmp_path / "no-sbatch"))
    assert "is not on PATH" in str(raised.value) and "--dry-run" in str(raised.value)


# --- on the real cluster ------------------------------------------------------------------------

WRAPPER = """\
import os, pathlib, subprocess, sys, time
# The real `lrstudy launch ... --dry-run`, with the task's environment.
subprocess.run([sys.executable, "-m", "study", *sys.argv[1:]], check=True)
# An orphan in a session of its own, as a worker is: the script's sweep must end it.
subprocess.Popen(["sleep", "300"], start_new_session=True)
# The tasks overlap, so each holds its GPU while the other runs: each waits for the other.
here = pathlib.Path(__file__).parent
(here / f"started-{os.environ['SLURM_ARRAY_TASK_ID']}").touch()
deadline = time.monotonic() + 120
while len(list(here.glob("started-*"))) < 2 and time.monotonic() < deadline:
    time.sleep(0.2)
"""


def test_each_gpu_task_plans_its_own_device_and_leaves_nothing_running(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    url = create_study(tmp_path)
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    plan = SlurmPlan(
        study="quick",
        array=2,
        log_dir=str(tmp_path),
        gpus_per_task=1,
        per_gpu=2,
        sbatch_args=("--comment", "lrstudy test"),
        launch_args=("--dry-run",),
        command=(sys.executable, str(wrapper)),
    )
    script = tmp_path / "gpus.sbatch"
    script.write_text(render_script(plan))
    job = submit(script, {**os.environ, "LRSTUDY_STORAGE": url})
    assert "Comment=lrstudy test " in slurm_cluster.run("scontrol", "-o", "show", "job", job)
    slurm_cluster.wait_gone(job, timeout=240)
    devices = []
    for task in (0, 1):
        log = (tmp_path / f"{job}_{task}.log").read_text()
        granted = re.search(r", GPUs (\S+)$", log, re.M)
        assert granted, log
        devices.append(granted.group(1))
        # launch --dry-run's plan: two workers, both on the GPU Slurm gave this task.
        planned = re.findall(r"^\S+  w\d+ gpu(\S+)  CUDA_VISIBLE_DEVICES=(\S+) ", log, re.M)
        assert planned == [(granted.group(1), granted.group(1))] * 2, log
        assert "stopping what the launcher left running" in log
        assert log.rstrip().endswith("launcher ended with exit code 0")
    assert sorted(devices) == ["0", "1"]
    assert tagged_processes(slurm_cluster) == []


def test_sbatch_refusal_is_one_line(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    del slurm_cluster
    plan = SlurmPlan(study="s", array=1, log_dir=str(tmp_path), partition="nonexistent")
    script = tmp_path / "s.sbatch"
    script.write_text(render_script(plan))
    with pytest.raises(InputError) as raised:
        submit(script, os.environ)
    message = str(raised.value)
    assert message.startswith("sbatch refused the job: ")
    assert "partition" in message.lower() and "\n" not in message


def _mid_cell(log: Path, epochs: int) -> int | None:
    """The trial number of the cell a task's log shows training, past its first epoch and
    short of its last ten; None before (or between) such cells."""
    text = log.read_text(errors="replace") if log.exists() else ""
    starts = list(re.finditer(r"worker \S+: trial (\d+) cell \S+ started", text))
    if not starts:
        return None
    number, since = starts[-1].group(1), text[starts[-1].end() :]
    done = re.findall(rf" epoch (\d+)/{epochs}: loss ", since)
    ended = re.search(rf"trial {number} cell \S+ (complete|failed|finished)", since)
    return int(number) if done and int(done[-1]) < epochs - 10 and not ended else None


def _signal_mid_cell(actions: dict[Path, Callable[[], object]], epochs: int) -> list[int]:
    """Run each task's action as soon as its own log shows a cell mid-training (tasks start
    seconds apart on a loaded machine: waiting for all would let the first finish its cell);
    the trial numbers the actions interrupted."""
    deadline = time.monotonic() + 300
    interrupted: dict[Path, int] = {}
    while len(interrupted) < len(actions):
        for log, action in actions.items():
            number = None if log in interrupted else _mid_cell(log, epochs)
            if number is not None:
                action()
                interrupted[log] = number
        if time.monotonic() > deadline:
            missing = [str(log) for log in actions if log not in interrupted]
            raise TimeoutError(f"no cell trained an epoch in {missing}")
        time.sleep(0.2)
    return [interrupted[log] for log in actions]


def test_a_study_runs_to_the_end_through_a_cancelled_and_a_requeued_task(
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cells of 40 epochs: a signal sent after a cell's first epoch finds it still training.
    # Two cells per task are enough for the three to be stopped and their cells finished.
    epochs = 40
    url = create_study(tmp_path, epochs=epochs, seeds=(0, 1))
    # A site's sbatch defaults that would override the script: one task, no environment.
    monkeypatch.setenv("SBATCH_ARRAY_INX", "0-0")
    monkeypatch.setenv("SBATCH_EXPORT", "NONE")
    code, out, err = lrstudy(
        ["slurm", "--storage", url, "--study", "quick", "--array", "4"], capsys
    )
    assert code == 0, err
    assert "leaving SBATCH_ARRAY_INX, SBATCH_EXPORT out of sbatch's environment" in caplog.text
    job = re.search(r"^submitted job (\d+): 4 array task", out, re.M)
    assert job, out
    job_id = job.group(1)
    folder = slurm_folder(tmp_path, url)
    saved = list(folder.glob("*.sbatch"))
    assert len(saved) == 1 and "sqlite" not in saved[0].read_text()

    # Mid-cell, task 1 is told to stop (as by --signal=B:TERM before its time limit), task 2
    # is requeued and task 3 cancelled (Slurm signals every process of each; 2 starts again).
    stopped, requeued, cancelled = (folder / f"{job_id}_{task}.log" for task in (1, 2, 3))
    first_cells = _signal_mid_cell(
        {
            stopped: lambda: slurm_cluster.run("scancel", "--batch", "--signal=TERM",
                                               f"{job_id}_1"),
            requeued: lambda: slurm_cluster.run("scontrol", "requeue", f"{job_id}_2"),
            cancelled: lambda: slurm_cluster.run("scancel", f"{job_id}_3"),
        },
        epochs,
    )  # fmt: skip
    slurm_cluster.wait_gone(job_id, timeout=600)

    study = optuna.load_study(study_name="quick", storage=url)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    per_cell = Counter((t.params["learning_rate"], t.params["seed"]) for t in complete)
    assert len(per_cell) == 8 and set(per_cell.values()) == {1}, per_cell
    assert not [t for t in trials if t.state in (optuna.trial.TrialState.WAITING,
                                                 optuna.trial.TrialState.RUNNING)]  # fmt: skip
    logs = "".join(log.read_text() for log in folder.glob(f"{job_id}_*.log"))
    for number in first_cells:  # put back in the queue as interrupted, not found stale later
        interrupted = trials[number]
        assert interrupted.state == optuna.trial.TrialState.FAIL
        assert interrupted.user_attrs.get("error") == "interrupted"
        # ... and finished by another task from the epochs it had checkpointed.
        lr, seed = interrupted.params["learning_rate"], interrupted.params["seed"]
        resumed = re.search(
            rf"cell small_cnn lr={lr:g} seed={seed}: resuming after epoch (\d+)", logs
        )
        assert resumed and int(resumed.group(1)) >= 1, (lr, seed)

    text = stopped.read_text()
    assert "SIGTERM; passing it on to the launcher" in text
    assert "this task stopped early (its time limit, or scancel --batch)" in text
    assert text.rstrip().endswith("launcher ended with exit code 143")
    # A whole-job signal reaches the launcher from Slurm itself, never a second time from the
    # script (that would make it kill its workers before they re-queue their cells). Slurm
    # signals the job's processes one by one: the script may end before its turn comes, so
    # its note "SIGTERM went to the whole job" is not always there.
    again = requeued.read_text()
    assert "passing it on" not in again
    assert "restart 1, GPUs none" in again  # it ran again ...
    assert again.rstrip().endswith("launcher ended with exit code 0")  # ... to the end
    assert slurm_cluster.job_field(f"{job_id}_2", "Restarts") == "1"
    assert "passing it on" not in cancelled.read_text()
    assert slurm_cluster.job_field(f"{job_id}_3", "JobState") == "CANCELLED"
    assert (folder / f"{job_id}_0.log").read_text().rstrip().endswith("exit code 0")
    assert tagged_processes(slurm_cluster) == []
