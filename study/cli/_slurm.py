"""``lrstudy slurm``: run a study's workers as a Slurm job array, one launcher per task.

The handler checks the study and the storage here, on the login node, so that a mistake ends
in one line now rather than in N failed tasks later. It loads Optuna but never Keras.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from storage._filesystem import check_sqlite_local, sqlite_path
from study.cli._common import (
    STORAGE_ENV,
    fetch_weights,
    quiet_optuna,
    storage_url,
    study_options,
)
from study.launch._slurm import (
    DEFAULT_SIGNAL_S,
    SlurmPlan,
    render_script,
    sbatch_environment,
    submit,
)
from trainer import InputError

if TYPE_CHECKING:
    import optuna

_logger = logging.getLogger(__name__)

# The folder under <artifacts>/<study>/ that holds the submitted scripts and the tasks' logs.
SLURM_FOLDER = "slurm"


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    slurm = subparsers.add_parser(
        "slurm",
        parents=[common, study_options()],
        help="Submit a Slurm job array whose tasks run `lrstudy launch` on a study.",
        description="Write an sbatch script for a job array of N tasks, each running "
        "`lrstudy launch` in its allocation, save it in the study's folder "
        "(<artifacts>/<study>-<id>/slurm/), and submit it. The storage URL reaches the tasks "
        "through $LRSTUDY_STORAGE (never the script). Options after -- are extra sbatch "
        "options, e.g. -- --qos=low --mem=16G.",
    )
    slurm.add_argument(
        "--array", required=True, type=int, metavar="N", help="Number of array tasks."
    )
    slurm.add_argument(
        "--gpus-per-task",
        type=int,
        default=0,
        metavar="G",
        help="GPUs per task (--gres=gpu:G); 0 (default) runs one CPU worker per task.",
    )
    slurm.add_argument(
        "--per-gpu", type=int, default=1, metavar="K", help="Workers per GPU (default 1)."
    )
    slurm.add_argument(
        "--cpus-per-task",
        type=int,
        metavar="C",
        help="CPUs per task (default: the partition's); image decoding wants 2-4 per worker.",
    )
    slurm.add_argument("--partition", metavar="P", help="Partition (default: the cluster's).")
    slurm.add_argument(
        "--time",
        metavar="TIME",
        help="Time limit per task, as sbatch takes it (e.g. 12:00:00, 2-00).",
    )
    slurm.add_argument("--account", metavar="A", help="Account to charge.")
    slurm.add_argument(
        "--signal-seconds",
        type=int,
        default=DEFAULT_SIGNAL_S,
        metavar="S",
        help=f"SIGTERM this long before the time limit (default {DEFAULT_SIGNAL_S}).",
    )
    slurm.add_argument("--job-name", default="", metavar="NAME", help="Default: lrstudy-STUDY.")
    slurm.add_argument(
        "--artifacts",
        metavar="DIR",
        help="The artifacts folder as the nodes see it, if not the stored one; the script "
        "and logs go to DIR/STUDY-ID/slurm/.",
    )
    slurm.add_argument(
        "--data", metavar="DIR", help="The dataset folder on the nodes, if not the stored one."
    )
    slurm.add_argument(
        "--cache-dir", metavar="DIR", help="The image cache folder on the nodes (shared)."
    )
    slurm.add_argument(
        "--backend",
        choices=("tensorflow", "jax"),
        help="Keras backend of the workers (KERAS_BACKEND).",
    )
    slurm.add_argument(
        "--dry-run", action="store_true", help="Print the script; save and submit nothing."
    )
    slurm.add_argument(
        "sbatch_args",
        nargs="*",
        metavar="-- SBATCH_OPTION",
        help="Extra sbatch options, after --.",
    )
    slurm.set_defaults(handler=handle_slurm)


def handle_slurm(args: argparse.Namespace) -> int:
    """Check, write, save and submit (or with --dry-run print) the job array's script."""
    url = storage_url(args.storage)
    check_sqlite_local(url)
    launch_args = _launch_args(args)
    # Made before the storage is opened: a bad flag is reported without waiting for a database.
    plan = _plan(args, log_dir="/", launch_args=launch_args)
    from storage import mask_url, open_storage
    from study.grid import load_grid_study, spec_from_study, study_folder, study_uid

    quiet_optuna()
    study = load_grid_study(open_storage(url, existing=True), args.study)
    root = _artifacts_folder(args.artifacts, study)
    folder = study_folder(root, args.study, study_uid(study)) / SLURM_FOLDER
    plan = _plan(args, log_dir=str(folder), launch_args=launch_args)
    stamp = datetime.datetime.now().astimezone()
    script = render_script(plan, written=f"on {stamp:%Y-%m-%d %H:%M:%S %z}")
    if sqlite_path(url) is not None:  # said before the dry run's script too
        _logger.warning(
            "the study is in SQLite: every task must run on this machine and see that file; "
            "a cluster needs PostgreSQL (--storage postgresql://USER@HOST:5432/DBNAME)"
        )
    if mask_url(url) != url or os.environ.get("PGPASSWORD"):
        _logger.warning(
            "the password (in the storage URL or PGPASSWORD) goes into the job's environment, "
            "which Slurm keeps with the job; put it in ~/.pgpass on the shared home instead"
        )
    env, dropped = sbatch_environment(plan, {**os.environ, STORAGE_ENV: url})
    if dropped:
        _logger.warning(
            "leaving %s out of sbatch's environment: sbatch would let them override the "
            "script's own options",
            ", ".join(dropped),
        )
    if args.dry_run:
        print(script, end="")
        return 0
    fetch_weights(spec_from_study(study, url))  # here: compute nodes may have no internet
    path = _save(folder, script, stamp)
    job = submit(path, env)
    print(f"submitted job {job}: {plan.array} array task(s) for study {args.study!r}")
    print(f"script: {path}")
    print(f"logs:   {folder}/{job}_*.log")
    print(f"watch:  {_status_command(url, args.study)}   squeue -j {job}")
    return 0


def _plan(args: argparse.Namespace, *, log_dir: str, launch_args: tuple[str, ...]) -> SlurmPlan:
    return SlurmPlan(
        study=args.study,
        array=args.array,
        log_dir=log_dir,
        gpus_per_task=args.gpus_per_task,
        per_gpu=args.per_gpu,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        time=args.time,
        account=args.account,
        signal_s=args.signal_seconds,
        job_name=args.job_name,
        sbatch_args=tuple(args.sbatch_args),
        launch_args=launch_args,
    )


def _launch_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The location options passed on to each task's ``lrstudy launch``, paths made absolute
    (a task starts in the submission folder, but an absolute path says what it will use)."""
    passed: list[str] = []
    for flag, value in (
        ("--data", args.data),
        ("--cache-dir", args.cache_dir),
        ("--artifacts", args.artifacts),
    ):
        if value is not None:
            keep = flag == "--data" and value == "kaggle"
            passed += [flag, value if keep else str(Path(value).expanduser().resolve())]
    if args.backend:
        passed += ["--backend", args.backend]
    return tuple(passed)


def _artifacts_folder(flag: str | None, study: optuna.Study) -> str:
    """--artifacts, else the artifacts folder in the study's stored spec."""
    if flag is not None:
        return str(Path(flag).expanduser().resolve())
    from study.grid import stored_locations

    stored, _ = stored_locations(study.user_attrs)
    if not stored:
        raise InputError(
            f"study {study.study_name!r} records no artifacts folder; pass "
            "--artifacts DIR (a folder every node sees)."
        )
    return str(Path(stored).expanduser().resolve())


def _save(folder: Path, script: str, stamp: datetime.datetime) -> Path:
    """Write the script as ``<folder>/<timestamp>.sbatch``, never over an earlier one."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for attempt in range(100):
            suffix = f"-{attempt}" if attempt else ""
            path = folder / f"{stamp:%Y%m%d-%H%M%S}{suffix}.sbatch"
            try:
                with path.open("x", encoding="utf-8") as handle:
                    handle.write(script)
            except FileExistsError:
                continue
            return path
    except OSError as error:
        raise InputError(
            f"cannot write the sbatch script into {str(folder)!r}: {error.strerror}; pass "
            "--artifacts DIR with a folder you can write and every node sees."
        ) from error
    raise InputError(f"{str(folder)!r} has 100 scripts of this second; submit again.")


def _status_command(url: str, study: str) -> str:
    """How to watch the study; the URL only when it holds no password to show."""
    from storage import mask_url

    name = shlex.quote(study)
    if mask_url(url) == url:
        return f"lrstudy status --storage {shlex.quote(url)} --study {name}"
    return f"{STORAGE_ENV}=<your URL> lrstudy status --study {name}"
