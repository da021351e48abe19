"""``lrstudy worker | launch | run``: train a study's cells, in one process or in many."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from functools import partial
from typing import TYPE_CHECKING

from storage import check_sqlite_local
from study.cli._common import (
    STORAGE_ENV,
    absolute,
    data_folder,
    fetch_weights,
    quiet_optuna,
    slots_flag,
    storage_url,
    study_options,
)
from study.cli._create import create_study, spec_of, spec_options
from trainer import InputError
from trainer._config import BACKENDS

if TYPE_CHECKING:
    import optuna

    from study.launch import LaunchSummary, Slot
    from study.spec import StudySpec

_logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    worker = subparsers.add_parser(
        "worker",
        parents=[common, study_options(), _location_options()],
        help="Train cells of a study until none is left.",
    )
    worker.add_argument("--worker-id", metavar="ID", help="Default: HOST-PID.")
    worker.set_defaults(handler=_worker)

    launch = subparsers.add_parser(
        "launch",
        parents=[common, study_options(), _location_options(), _slot_options()],
        help="Run local worker processes, one per GPU slot or CPU worker.",
    )
    launch.add_argument(
        "--dry-run",
        action="store_true",
        help="Print each slot's worker id, CUDA_VISIBLE_DEVICES and memory settings; start none.",
    )
    launch.set_defaults(handler=_launch)

    run = subparsers.add_parser(
        "run",
        parents=[common, spec_options(), _slot_options()],
        help="Create or resume a study, run it here to the end, print the summary.",
    )
    _add_backend(run)
    run.set_defaults(handler=_run)


def _location_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="This machine's dataset folder (or kaggle), if not the stored one.",
    )
    parser.add_argument("--cache-dir", metavar="DIR", help="This machine's image cache folder.")
    parser.add_argument(
        "--artifacts", metavar="DIR", help="This machine's artifacts folder (checkpoints)."
    )
    _add_backend(parser)
    return parser


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="The study's Keras backend, train.backend: sets it for a new study (as --set "
        "train.backend=NAME), must equal it for an existing one. Workers run under it.",
    )


def _study_backend(spec: StudySpec, given: str | None) -> str:
    """The study's backend (``train.backend``), which its workers run under.

    An explicit ``--backend`` that differs is refused; an inherited ``KERAS_BACKEND`` (a shell
    default, or a container image's) is overruled with a warning, since the study decides.
    """
    backend = spec.train.backend
    if given and given != backend:
        raise InputError(
            f"--backend {given} conflicts with train.backend = {backend!r} of study "
            f"{spec.study.name!r}; leave --backend out (workers run the study's backend), or "
            f"create another study with --set train.backend={given}"
        )
    inherited = os.environ.get("KERAS_BACKEND")
    if inherited and inherited != backend:
        _logger.warning(
            "KERAS_BACKEND=%s is overruled: study %r runs under train.backend = %r",
            inherited,
            spec.study.name,
            backend,
        )
    return backend


def _slot_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    slots = parser.add_mutually_exclusive_group()
    slots.add_argument(
        "--gpus",
        metavar="LIST",
        help="all, or positions like 0,1,3 (or GPU/MIG UUIDs) in the GPUs this process may use: "
        "an inherited CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists.",
    )
    slots.add_argument("--workers", type=int, metavar="N", help="Run N CPU workers.")
    parser.add_argument(
        "--per-gpu", type=int, default=1, metavar="K", help="Workers per GPU (default 1)."
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        metavar="N",
        help="Restarts of a worker that dies unexpectedly (default 3).",
    )
    return parser


def _worker(args: argparse.Namespace) -> int:
    from study.launch import follow_launcher

    follow_launcher()
    url = storage_url(args.storage)
    check_sqlite_local(url)
    quiet_optuna()
    from storage import call_reconnecting, open_storage
    from study.grid import (
        CellObjective,
        RetryStaleCell,
        TrialLogTag,
        load_grid_study,
        run_worker,
        spec_from_study,
    )

    for handler in logging.getLogger().handlers:  # each epoch line then names its trial
        handler.addFilter(TrialLogTag())

    # A worker rides out a database that is away as it starts (a restart, a Slurm array
    # starting before the server is up), as it does once running; a wrong password still
    # stops it at once.
    reader = call_reconnecting(
        partial(open_storage, url, existing=True), what="opening the study's database"
    )
    try:
        spec = spec_from_study(load_grid_study(reader, args.study), url)
    finally:
        reader.engine.dispose()  # the worker opens its own, with heartbeats, below
    spec = spec.with_locations(
        data_root=absolute(data_folder(args.data)),
        cache_dir=absolute(args.cache_dir),
        artifacts=absolute(args.artifacts),
    )
    backend = _study_backend(spec, args.backend)
    os.environ["KERAS_BACKEND"] = backend  # before anything imports Keras (nothing has yet)
    if backend == "jax":
        from trainer._determinism import deterministic_xla
        from trainer._train import use_deterministic_xla

        # Probed on a GPU before JAX starts (it reads the flag once): a jaxlib without the
        # kernels stops here (or, with "if-available", trains without them), not in every cell.
        if deterministic_xla(spec.train.deterministic):
            use_deterministic_xla()
    from study.launch import GPU_SLOT_ENV

    if GPU_SLOT_ENV in os.environ:
        from trainer._devices import require_gpu

        require_gpu(os.environ[GPU_SLOT_ENV])  # before claiming a cell it would train on the CPU
    storage = call_reconnecting(
        partial(
            open_storage,
            url,
            heartbeat_s=spec.worker.heartbeat_s,
            grace_s=spec.worker.grace_s,
            stale_trial_callback=RetryStaleCell(),
        ),
        what="opening the study's database",
    )
    worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    # Exit 0 also after SIGTERM or Ctrl-C: the trial went back to the queue, nothing is lost.
    run_worker(
        load_grid_study(storage, args.study),
        CellObjective(spec),
        worker_id=worker_id,
        after_trial=_refresh_views,
    )
    return 0


def _refresh_views(study: optuna.Study) -> None:
    """Redraw the dashboard's comparison figure and note; a failed redraw never stops a worker.

    Handed to the worker as a callback, so that the grid room never imports results code.
    """
    from study.results import refresh_views

    try:
        refresh_views(study)
    except Exception as error:  # the views are a convenience; the trial is already stored
        _logger.warning("could not refresh the dashboard views of %s: %s", study.study_name, error)


def _launch(args: argparse.Namespace) -> int:
    quiet_optuna()
    from storage import open_storage
    from study.grid import load_grid_study, spec_from_study
    from study.launch import plan_slots

    if args.gpus is None and args.workers is None:
        raise InputError(
            "launch needs --gpus LIST, --gpus all or --workers N; got none of them. "
            f"Example: lrstudy launch --storage URL --study {args.study} {slots_flag()}."
        )
    url = storage_url(args.storage)
    check_sqlite_local(url)
    study = load_grid_study(open_storage(url, existing=True), args.study)
    spec = spec_from_study(study, url)
    _study_backend(spec, args.backend)
    slots = plan_slots(gpus=args.gpus, workers=args.workers, per_gpu=args.per_gpu)
    if args.dry_run:
        from study.launch import plan_lines

        host = _worker_host()
        print("\n".join(plan_lines(slots, os.environ, lambda slot: f"{host}-{slot.name}")))
        return 0
    if _all_complete(study):
        return _finish(study, None)
    fetch_weights(spec)
    locations = {
        "--data": data_folder(args.data),
        "--cache-dir": args.cache_dir,
        "--artifacts": args.artifacts,
    }
    summary = _supervise(study, url, slots, args, locations)
    return _finish(study, summary)


def _run(args: argparse.Namespace) -> int:
    quiet_optuna()
    from study.launch import plan_slots
    from study.spec import QUICK_NOTE

    if args.backend:
        args.overrides.append(f"train.backend={args.backend}")
    spec = spec_of(args)
    _study_backend(spec, args.backend)
    check_sqlite_local(spec.study.storage)
    slots = plan_slots(gpus=args.gpus, workers=args.workers, per_gpu=args.per_gpu)
    fetch_weights(spec)
    study, created = create_study(spec)
    if not created:  # a new study is logged where it is created
        _logger.info("resuming study %r: %d cells", spec.study.name, len(spec.cells()))
    if args.preset == "quick":
        _logger.warning("%s", QUICK_NOTE)
    summary = None
    if not _all_complete(study):
        locations = {
            "--data": spec.data.root,
            "--cache-dir": spec.data.cache_dir,
            "--artifacts": spec.study.artifacts,
        }
        summary = _supervise(study, spec.study.storage, slots, args, locations)
    code = _finish(study, summary)
    if args.preset == "quick":
        print(f"\n{QUICK_NOTE}")
    return code


def _all_complete(study: optuna.Study) -> bool:
    from study.grid import cell_states

    if all(state.state == "complete" for state in cell_states(study)):
        _logger.info("every cell of study %r is complete already", study.study_name)
        return True
    return False


def _supervise(
    study: optuna.Study,
    url: str,
    slots: list[Slot],
    args: argparse.Namespace,
    locations: dict[str, str | None],
) -> LaunchSummary:
    """Run the workers of ``slots`` on ``study`` here, logging progress now and then."""
    from study.launch import launch
    from study.results import progress_line

    host = _worker_host()
    extra = [part for flag, value in locations.items() if value for part in (flag, value)]
    if args.backend:
        extra += ["--backend", args.backend]
    if args.verbose:
        extra.append("--verbose")  # a failed trial's traceback is logged at debug level

    def command(slot: Slot) -> list[str]:
        return [
            sys.executable, "-m", "study", "worker",
            "--study", study.study_name, "--worker-id", f"{host}-{slot.name}", *extra,
        ]  # fmt: skip

    env = {**os.environ, STORAGE_ENV: url}
    _logger.info(
        "study %r: starting %d worker(s): %s",
        study.study_name,
        len(slots),
        ", ".join(slot.label for slot in slots),
    )
    summary = launch(
        slots,
        command,
        max_restarts=args.max_restarts,
        env=env,
        on_tick=lambda: _logger.info("progress: %s", progress_line(study)),
    )
    if summary.refused:
        raise InputError(
            f"worker {', '.join(summary.refused)} stopped on bad input (its line above says "
            "why and how to fix it), so the launcher stopped every worker; running cells went "
            "back to the queue"
        )
    return summary


def _worker_host() -> str:
    """The host part of launched workers' ids; a Slurm array task adds its job and task ids,
    since several tasks of one array may run on one node."""
    host = socket.gethostname()
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{host}-{job}_{task}" if job and task else host


def _finish(study: optuna.Study, summary: LaunchSummary | None) -> int:
    """Print the grid and the summary; 0 when every cell is complete, else 1 and why."""
    from storage import rdb_backend
    from study.cli._lifecycle import command_line, shown_url
    from study.grid import cell_states, load_grid_study
    from study.results import failure_lines, status_table, summary_table

    # Read afresh, past Optuna's cache of finished trials: `lrstudy extend` may have run.
    study = load_grid_study(rdb_backend(study._storage) or study._storage, study.study_name)

    print(status_table(study))
    states = cell_states(study)
    print()
    print(summary_table(study))
    if summary is not None:
        restarts = sum(outcome.restarts for outcome in summary.outcomes)
        print(
            f"\n{len(summary.outcomes)} worker(s) ran for {summary.seconds:.0f} s"
            f"{f', {restarts} restart(s)' if restarts else ''}"
        )
        if summary.interrupted_by is not None:
            name = signal.Signals(summary.interrupted_by).name
            print(f"interrupted by {name}: run the same command again to finish the grid")
            return 128 + summary.interrupted_by
    unfinished = [state for state in states if state.state != "complete"]
    if not unfinished:
        return 0
    failures = failure_lines(study)
    for line in failures:
        print(f"lrstudy: {line}", file=sys.stderr)
    if failures:
        retry = command_line("retry", study.study_name, shown_url(study))
        print(
            "lrstudy: fix the cause (`lrstudy status` shows each reason, and where a traceback "
            f"is), then `{retry}` and run this command again",
            file=sys.stderr,
        )
    else:
        print(
            f"lrstudy: {len(unfinished)} cell(s) did not finish (the workers stopped early, see "
            "their log above); run this command again",
            file=sys.stderr,
        )
    return 1
