"""``lrstudy init | create``: write a spec, and create the study of a spec."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from study.cli._common import add_storage_option, data_folder, quiet_optuna, storage_url
from study.cli._lifecycle import launch_line
from trainer import InputError, check_layout

if TYPE_CHECKING:
    import optuna

    from study.spec import StudySpec

_logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    init = subparsers.add_parser(
        "init",
        parents=[common],
        help="Write a built-in study spec (paper or quick) as a commented TOML file.",
    )
    init.add_argument("file", nargs="?", default="lrstudy.toml", metavar="FILE")
    init.add_argument(
        "--preset", default="paper", metavar="NAME", help="paper (default) or quick."
    )
    init.add_argument("--force", action="store_true", help="Overwrite an existing file.")
    init.set_defaults(handler=_init)

    create = subparsers.add_parser(
        "create",
        parents=[common, spec_options()],
        help="Create the study of a spec (no-op if it exists).",
    )
    create.set_defaults(handler=_create)


def spec_options() -> argparse.ArgumentParser:
    """``--spec``/``--preset``, ``--data``, ``--storage`` and ``--set``: which spec, where."""
    parser = argparse.ArgumentParser(add_help=False)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--spec", metavar="FILE", help="A study spec (TOML), see `lrstudy init`.")
    source.add_argument(
        "--preset",
        metavar="NAME",
        help="A built-in spec: paper (the default without --spec), or quick (a CPU smoke run).",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="The dataset folder (data.root), or kaggle for the download of `lrstudy data fetch`.",
    )
    add_storage_option(parser, default="study.storage of the spec")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="Override a spec key with a TOML value, e.g. --set train.epochs=2 "
        "--set 'grid.seed=[0]'. Repeatable.",
    )
    return parser


def _init(args: argparse.Namespace) -> int:
    from study.spec import preset_toml

    text = preset_toml(args.preset)
    path = Path(args.file)
    if path.exists() and not args.force:
        raise InputError(
            f"FILE {str(path)!r} already exists; pass --force to overwrite it, or another FILE."
        )
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise InputError(f"FILE {str(path)!r} cannot be written: {error.strerror}.") from error
    print(f"wrote {path}; next: lrstudy run --spec {path} --data DIR")
    return 0


def _create(args: argparse.Namespace) -> int:
    quiet_optuna()
    from storage import mask_url
    from study.grid import cell_states

    spec = spec_of(args)
    study, created = create_study(spec)
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
    print(f"start workers: {launch_line(spec.study.name, spec.study.storage)}")
    return 0


def spec_of(args: argparse.Namespace) -> StudySpec:
    """The spec of --spec/--preset with --set, --data, --storage (or $LRSTUDY_STORAGE) applied."""
    from study.spec import check_cells, load_preset, load_spec

    if args.spec:
        spec = load_spec(args.spec, args.overrides)
    else:
        spec = load_preset(args.preset or "paper", args.overrides)
    root = data_folder(args.data or spec.data.root)
    storage = storage_url(args.storage, spec.study.storage)
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
    check_layout(spec.data)
    check_cells(spec)
    return spec


def create_study(spec: StudySpec) -> tuple[optuna.Study, bool]:
    from storage import open_storage
    from study.grid import create_from_spec

    return create_from_spec(open_storage(spec.study.storage), spec)
