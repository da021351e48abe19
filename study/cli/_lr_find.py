"""``lrstudy lr-find``: the learning-rate range test on a spec's cell, to place the grid's rates.

See docs/science.md, "Reading the learning-rate range test".
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.cli._common import quiet_optuna
from study.cli._create import spec_of, spec_options
from trainer import InputError, use_deterministic_xla
from trainer._config import BACKENDS
from trainer._determinism import deterministic_xla

if TYPE_CHECKING:
    import optuna

    from study.spec import StudySpec
    from trainer import LrFindResult

_logger = logging.getLogger(__name__)

LR_FIND_PNG = "lr_find.png"


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "lr-find",
        parents=[common, spec_options()],
        help="Run the learning-rate range test on a spec's cell and suggest the grid's rates.",
        description=(
            "Train the spec's cell for --steps batches while the learning rate rises "
            "geometrically from --min to --max; print where the loss falls fastest, where it "
            "is lowest and where it diverges, and a grid of four rates as a --set option. "
            "Writes lr_find.csv and lr_find.png into --out. With --study, also shows the curve "
            "on that study's dashboard page and adds both files to its artifacts, numbered per "
            "run (lr_find-1.csv, ...)."
        ),
    )
    parser.add_argument(
        "--min",
        dest="min_lr",
        type=float,
        default=1e-7,
        metavar="RATE",
        help="The first learning rate (default 1e-07).",
    )
    parser.add_argument(
        "--max",
        dest="max_lr",
        type=float,
        default=1.0,
        metavar="RATE",
        help="The last learning rate (default 1).",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=200,
        metavar="N",
        help="Batches to train (default 200); more give a finer, less lagging curve.",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed of the initial weights and batch order (default 0).",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="The Keras backend, as --set train.backend=NAME (default: the spec's).",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="Folder for lr_find.csv and lr_find.png (default ARTIFACTS/lr-find/STUDY-seedSEED, "
        "ARTIFACTS and STUDY from the spec).",
    )
    parser.add_argument(
        "--study",
        metavar="NAME",
        help="An existing study to attach the curve to, in --storage (default $LRSTUDY_STORAGE, "
        "else study.storage of the spec).",
    )
    parser.add_argument(
        "--artifacts",
        metavar="DIR",
        help="This machine's artifacts folder of --study, if not the one it recorded.",
    )
    parser.set_defaults(handler=_lr_find)


def _lr_find(args: argparse.Namespace) -> int:
    from study.spec import cell_config

    if (args.storage or args.artifacts) and not args.study:
        raise InputError(
            "--storage and --artifacts name where --study is; pass --study NAME to attach the "
            "curve to that study, or leave them out"
        )
    if args.backend:
        args.overrides.append(f"train.backend={args.backend}")
    spec = spec_of(args)
    config = cell_config(spec, _probe_params(spec, args.seed))
    # Before the minutes of training: a wrong study name fails now.
    study = _target_study(spec, args.study) if args.study else None
    _use_backend(spec)
    from optuna.artifacts import get_all_artifact_meta

    from study.results import attach_lr_find, lr_find_png
    from trainer import LR_FIND_FILE, find_learning_rate, write_lr_find_csv

    result = find_learning_rate(
        config, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps, verbose=True
    )
    default = Path(spec.study.artifacts) / "lr-find" / f"{spec.study.name}-seed{args.seed}"
    out = Path(args.out or default)
    out.mkdir(parents=True, exist_ok=True)
    files = (out / LR_FIND_FILE, out / LR_FIND_PNG)
    write_lr_find_csv(result, files[0])
    lr_find_png(result, files[1])
    print()  # the progress bar of a pass the test stopped leaves its line open
    print(_summary(result))
    print(f"wrote {files[0]} and {files[1]}")
    if study is not None:
        ids = attach_lr_find(study, result, files, artifacts=args.artifacts)
        names = {meta.artifact_id: meta.filename for meta in get_all_artifact_meta(study)}
        print(
            f"attached to study {study.study_name!r}: the figure on its dashboard page, "
            f"{' and '.join(names[id_] for id_ in ids)} among its artifacts"
        )
    if result.still_falling:
        _logger.warning(
            "lr-find: the loss was still falling at --max %g, so the suggested rates may lie "
            "too low; run again with a higher --max, e.g. --max %g",
            result.max_lr,
            result.max_lr * 10,
        )
    # After the files: a curve without a suggestion is still worth a look.
    override = result.grid_override()
    if study is not None:  # its grid is stored: the suggestion runs as a study of its own
        rename = shlex.join(["--set", f"study.name={study.study_name}-suggested"])
        override = f"{rename} {override}"
    print(f"next: lrstudy run {_run_options(args)} {override}")
    return 0


def _probe_params(spec: StudySpec, seed: int) -> dict[str, Any]:
    """The grid cell the test trains: ``seed``, and every other axis at its first value (said
    on stderr); its learning rate is replaced by the test's rising one."""
    params = {axis: values[0] for axis, values in spec.grid.items()}
    params["seed"] = seed
    for axis, values in spec.grid.items():
        if axis not in ("learning_rate", "seed") and len(values) > 1:
            _logger.info(
                "lr-find: grid.%s has %d values; the test uses the first, %r",
                axis, len(values), values[0],
            )  # fmt: skip
    return params


def _target_study(spec: StudySpec, name: str) -> optuna.Study:
    """The study to attach to; a warning when its stored protocol trains another cell."""
    quiet_optuna()
    from storage import open_storage
    from study.grid import load_grid_study, spec_from_study
    from study.spec import protocol_differences

    study = load_grid_study(open_storage(spec.study.storage, existing=True), name)
    try:
        stored = spec_from_study(study, spec.study.storage)
    except InputError:
        return study  # not made from a spec: nothing to compare
    differences = [
        difference
        for difference in protocol_differences(stored, spec)
        if difference.startswith(("train.", "data."))
    ]
    if differences:
        _logger.warning(
            "lr-find: study %r trains another cell than this spec: %s; its page will show a "
            "curve of this spec's cell",
            name, "; ".join(differences),
        )  # fmt: skip
    return study


def _use_backend(spec: StudySpec) -> None:
    """The spec's Keras backend, set before Keras loads, as a worker of its study would."""
    backend = spec.train.backend
    chosen = os.environ.get("KERAS_BACKEND")
    if chosen and chosen != backend:
        raise InputError(
            f"KERAS_BACKEND={chosen} conflicts with train.backend = {backend!r} of the spec; "
            f"pass --backend {chosen}, or unset KERAS_BACKEND"
        )
    os.environ["KERAS_BACKEND"] = backend
    if backend == "jax" and deterministic_xla(spec.train.deterministic):
        use_deterministic_xla()  # JAX reads it once, at its first use


def _summary(result: LrFindResult) -> str:
    config = result.config
    if result.stopped_early:
        end = f"stopped ({result.stopped_early}) at step {len(result.rows)}"
        divergence = f"{result.divergence_lr:.3g}"
    else:
        end = "ran to the end"
        divergence = f"none up to --max {result.max_lr:g}"
    try:
        grid = ", ".join(f"{rate:g}" for rate in result.suggested_grid())
    except InputError:
        grid = "none (see below)"
    return "\n".join(
        [
            f"lr-find {config.model}, {config.image_size} px, batch {config.batch_size}, "
            f"{config.optimizer}, {config.backend}, seed {config.seed}: {result.steps} steps from "
            f"{result.min_lr:g} to {result.max_lr:g}, {end}",
            f"  steepest descent  {_rate(result.steepest_lr)}",
            f"  lowest loss       {_rate(result.min_loss_lr)}",
            f"  divergence        {divergence}",
            f"  suggested grid    {grid}",
        ]
    )


def _rate(rate: float | None) -> str:
    return "none" if rate is None else f"{rate:.3g}"


def _run_options(args: argparse.Namespace) -> str:
    """The spec options of this command, for ``lrstudy run`` with the suggested grid."""
    from study.spec import parse_override

    options = ["--spec", args.spec] if args.spec else ["--preset", args.preset or "paper"]
    if args.data:
        options += ["--data", args.data]
    for text in args.overrides:
        if parse_override(text)[:2] != ("grid", "learning_rate"):
            options += ["--set", text]
    return shlex.join(options)
