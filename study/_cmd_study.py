"""``lrstudy init | create | worker | launch | run | status``: the study service's commands.

Handlers import Optuna, the storage layer and (in workers only) Keras lazily, so ``--help``,
``init``, ``create`` and ``status`` never load TensorFlow.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from study._storage_option import STORAGE_ENV, add_storage_option, storage_url
from trainer import InputError

if TYPE_CHECKING:
    import optuna

    from study._launch import LaunchSummary, Slot
    from study._spec import StudySpec

_logger = logging.getLogger(__name__)

_BACKENDS = ("tensorflow", "jax")


def register(subparsers: argparse._SubParsersAction) -> None:
    spec_options = argparse.ArgumentParser(add_help=False)
    source = spec_options.add_mutually_exclusive_group()
    source.add_argument("--spec", metavar="FILE", help="A study spec (TOML), see `lrstudy init`.")
    source.add_argument(
        "--preset",
        metavar="NAME",
        help="A built-in spec: paper (the default without --spec), or quick (a CPU smoke run).",
    )
    spec_options.add_argument(
        "--data",
        metavar="DIR",
        help="The dataset folder (data.root), or kaggle for the download of `lrstudy data fetch`.",
    )
    add_storage_option(spec_options, default="study.storage of the spec")
    spec_options.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="Override a spec key with a TOML value, e.g. --set train.epochs=2 "
        "--set 'grid.seed=[0]'. Repeatable.",
    )

    study_options = argparse.ArgumentParser(add_help=False)
    add_storage_option(study_options)
    study_options.add_argument("--study", required=True, metavar="NAME", help="Study name.")

    location_options = argparse.ArgumentParser(add_help=False)
    location_options.add_argument(
        "--data",
        metavar="DIR",
        help="This machine's dataset folder (or kaggle), if not the stored one.",
    )
    location_options.add_argument(
        "--cache-dir", metavar="DIR", help="This machine's image cache folder."
    )
    location_options.add_argument(
        "--artifacts", metavar="DIR", help="This machine's artifacts folder (checkpoints)."
    )
    location_options.add_argument(
        "--backend", choices=_BACKENDS, help="Keras backend of the workers (KERAS_BACKEND)."
    )

    slot_options = argparse.ArgumentParser(add_help=False)
    slots = slot_options.add_mutually_exclusive_group()
    slots.add_argument("--gpus", metavar="LIST", help="GPU indices like 0,1,3, or all.")
    slots.add_argument("--workers", type=int, metavar="N", help="Run N CPU workers.")
    slot_options.add_argument(
        "--per-gpu", type=int, default=1, metavar="K", help="Workers per GPU (default 1)."
    )
    slot_options.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        metavar="N",
        help="Restarts of a worker that dies unexpectedly (default 3).",
    )

    init = subparsers.add_parser(
        "init", help="Write a built-in study spec (paper or quick) as a commented TOML file."
    )
    init.add_argument("file", nargs="?", default="lrstudy.toml", metavar="FILE")
    init.add_argument(
        "--preset", default="paper", metavar="NAME", help="paper (default) or quick."
    )
    init.add_argument("--force", action="store_true", help="Overwrite an existing file.")
    init.set_defaults(handler=_init)

    create = subparsers.add_parser(
        "create", parents=[spec_options], help="Create the study of a spec (no-op if it exists)."
    )
    create.set_defaults(handler=_create)

    worker = subparsers.add_parser(
        "worker",
        parents=[study_options, location_options],
        help="Train cells of a study until none is left.",
    )
    worker.add_argument("--worker-id", metavar="ID", help="Default: HOST-PID.")
    worker.set_defaults(handler=_worker)

    launch = subparsers.add_parser(
        "launch",
        parents=[study_options, location_options, slot_options],
        help="Run local worker processes, one per GPU slot or CPU worker.",
    )
    launch.set_defaults(handler=_launch)

    run = subparsers.add_parser(
        "run",
        parents=[spec_options, slot_options],
        help="Create or resume a study, run it here to the end, print the summary.",
    )
    run.add_argument(
        "--backend", choices=_BACKENDS, help="Keras backend of the workers (KERAS_BACKEND)."
    )
    run.set_defaults(handler=_run)

    status = subparsers.add_parser(
        "status", parents=[study_options], help="Show the grid: each cell's state."
    )
    status.set_defaults(handler=_status)


# --- handlers -----------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from study._presets import preset_toml

    text = preset_toml(args.preset)
    path = Path(args.file)
    if path.exists() and not args.force:
        raise InputError(
            f"FILE {str(path)!r} already exists; pass --force to overwrite it, or another FILE."
        )
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise InputError(f"FILE {str(path)!r} cannot be written: {error.strerror}.") from None
    print(f"wrote {path}; next: lrstudy run --spec {path} --data DIR")
    return 0


def _create(args: argparse.Namespace) -> int:
    _quiet_optuna()
    from storage import mask_url
    from study._grid import cell_states

    spec = _spec_of(args)
    study, created = _create_study(spec)
    states = cell_states(study)
    done = sum(state.state == "complete" for state in states)
    where = mask_url(spec.study.storage)
    if created:
        print(f"created study {spec.study.name!r} with {len(states)} cells in {where}")
    else:
        print(
            f"study {spec.study.name!r} already exists in {where} with the same protocol "
            f"({done} of {len(states)} cells complete); nothing to do"
        )
    # A masked URL fails when pasted and the password must not be shown: then name the variable.
    if where == spec.study.storage:
        launch = f"lrstudy launch --storage '{where}'"
    else:
        launch = f"{STORAGE_ENV}=<your URL> lrstudy launch"
    print(f"start workers: {launch} --study {spec.study.name} --gpus all")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from study._launch import follow_launcher

    follow_launcher()
    url = storage_url(args.storage)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend  # before anything imports Keras
    _quiet_optuna()
    from storage import open_storage
    from study._grid import load_grid_study
    from study._objective import CellObjective
    from study._spec import spec_from_study
    from study._worker import run_worker

    spec = spec_from_study(load_grid_study(open_storage(url, existing=True), args.study), url)
    spec = spec.with_locations(
        data_root=_absolute(_data_folder(args.data)),
        cache_dir=_absolute(args.cache_dir),
        artifacts=_absolute(args.artifacts),
    )
    if spec.train.deterministic and os.environ.get("KERAS_BACKEND") == "jax":
        from trainer._train import use_deterministic_xla

        use_deterministic_xla()  # JAX reads it once, at its first use
    storage = open_storage(
        url,
        heartbeat_s=spec.worker.heartbeat_s,
        grace_s=spec.worker.grace_s,
        max_retries=spec.worker.max_retries,
    )
    worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    # Exit 0 also after SIGTERM or Ctrl-C: the trial went back to the queue, nothing is lost.
    run_worker(
        load_grid_study(storage, args.study),
        CellObjective(spec),
        worker_id=worker_id,
        max_retries=spec.worker.max_retries,
        after_trial=_refresh_views,
    )
    return 0


def _refresh_views(study: optuna.Study) -> None:
    """Redraw the dashboard's comparison figure and note; a failed redraw never stops a worker."""
    from study._dashboard import refresh_views

    try:
        refresh_views(study)
    except Exception as error:  # the views are a convenience; the trial is already stored
        _logger.warning("could not refresh the dashboard views of %s: %s", study.study_name, error)


def _launch(args: argparse.Namespace) -> int:
    _quiet_optuna()
    from storage import open_storage
    from study._grid import load_grid_study
    from study._launch import plan_slots

    if args.gpus is None and args.workers is None:
        raise InputError(
            "launch needs --gpus LIST, --gpus all or --workers N; got none of them. "
            "Example: lrstudy launch --storage URL --study NAME --gpus all."
        )
    url = storage_url(args.storage)
    study = load_grid_study(open_storage(url, existing=True), args.study)
    slots = plan_slots(gpus=args.gpus, workers=args.workers, per_gpu=args.per_gpu)
    if _all_complete(study):
        return _finish(study, None)
    locations = {
        "--data": _data_folder(args.data),
        "--cache-dir": args.cache_dir,
        "--artifacts": args.artifacts,
    }
    summary = _supervise(study, url, slots, args, locations)
    return _finish(study, summary)


def _run(args: argparse.Namespace) -> int:
    _quiet_optuna()
    from study._launch import plan_slots
    from study._presets import QUICK_NOTE

    spec = _spec_of(args)
    slots = plan_slots(gpus=args.gpus, workers=args.workers, per_gpu=args.per_gpu)
    _check_imagenet(spec)
    study, created = _create_study(spec)
    _logger.info(
        "%s study %r: %d cells",
        "created" if created else "resuming",
        spec.study.name,
        len(spec.cells()),
    )
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


def _status(args: argparse.Namespace) -> int:
    _quiet_optuna()
    from storage import open_storage
    from study._grid import load_grid_study
    from study._status import status_table

    study = load_grid_study(open_storage(storage_url(args.storage), existing=True), args.study)
    print(status_table(study))
    return 0


# --- helpers ------------------------------------------------------------------------------


def _quiet_optuna() -> None:
    """Our own log lines say what happens; Optuna's repeat them, and its experimental-API
    warnings (heartbeats, metric names) speak to library developers, not to our users."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _spec_of(args: argparse.Namespace) -> StudySpec:
    """The spec of --spec/--preset with --set, --data, --storage (or $LRSTUDY_STORAGE) applied."""
    from study._objective import check_cells
    from study._spec import load_preset, load_spec

    if args.spec:
        spec = load_spec(args.spec, args.overrides)
    else:
        spec = load_preset(args.preset or "paper", args.overrides)
    root = _data_folder(args.data or spec.data.root)
    storage = args.storage or os.environ.get(STORAGE_ENV) or None
    spec = spec.with_locations(storage=storage, data_root=root).resolved()
    if spec.data.root is None:
        raise InputError(
            "data.root is not set: the study needs the dataset folder. "
            "Fix: pass --data DIR, or set root in [data] of the spec."
        )
    if not Path(spec.data.root).is_dir():
        raise InputError(
            f"--data (data.root) {spec.data.root!r} is not a folder; "
            "pass the folder that holds the chest X-ray images."
        )
    check_cells(spec)
    return spec


def _check_imagenet(spec: StudySpec) -> None:
    """Unreachable ImageNet weights would fail every cell here until its retries are spent,
    leaving the study failed for good; say so once, before anything is created."""
    from trainer._model import check_imagenet_reachable

    if spec.train.weights == "imagenet" or "imagenet" in spec.grid.get("weights", ()):
        try:
            check_imagenet_reachable()
        except InputError as error:
            raise InputError(
                f"{error}; in a study that is --set train.weights=none or =PATH"
            ) from None


def _create_study(spec: StudySpec) -> tuple[optuna.Study, bool]:
    from storage import open_storage
    from study._spec import create_from_spec

    return create_from_spec(open_storage(spec.study.storage), spec)


def _all_complete(study: optuna.Study) -> bool:
    from study._grid import cell_states

    if all(state.state == "complete" for state in cell_states(study)):
        _logger.info("every cell of study %r is complete already", study.study_name)
        return True
    return False


def _data_folder(value: str | None) -> str | None:
    """A --data value or data.root with ``kaggle`` made the downloaded dataset's folder."""
    from study._fetch import resolve_data

    return None if value is None else resolve_data(value)


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _supervise(
    study: optuna.Study,
    url: str,
    slots: list[Slot],
    args: argparse.Namespace,
    locations: dict[str, str | None],
) -> LaunchSummary:
    """Run the workers of ``slots`` on ``study`` here, logging progress now and then."""
    from study._launch import launch
    from study._status import progress_line

    host = socket.gethostname()
    extra = [part for flag, value in locations.items() if value for part in (flag, value)]
    if args.backend:
        extra += ["--backend", args.backend]

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
    return launch(
        slots,
        command,
        max_restarts=args.max_restarts,
        env=env,
        on_tick=lambda: _logger.info("progress: %s", progress_line(study)),
    )


def _finish(study: optuna.Study, summary: LaunchSummary | None) -> int:
    """Print the grid and the summary; 0 when every cell is complete."""
    from study._grid import cell_states
    from study._status import status_table, summary_table

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
    return 0 if all(state.state == "complete" for state in states) else 1
