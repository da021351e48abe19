"""``lrstudy retry | extend``: failed cells back in the queue, new values on the grid's axes."""

from __future__ import annotations

import argparse
import math
import re
import shlex
from typing import TYPE_CHECKING, Any

from study.cli._common import STORAGE_ENV, quiet_optuna, slots_flag, storage_url, study_options
from trainer import InputError

if TYPE_CHECKING:
    import optuna


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    retry = subparsers.add_parser(
        "retry",
        parents=[common, study_options()],
        help="Queue the cells that failed for good again, each with a fresh retry budget.",
    )
    retry.add_argument(
        "--cell",
        dest="cells",
        action="append",
        metavar="AXIS=VALUE,...",
        help="Only this cell, e.g. --cell learning_rate=0.1,seed=2 (every axis). Repeatable. "
        "Default: every failed cell.",
    )
    retry.set_defaults(handler=_retry)

    extend = subparsers.add_parser(
        "extend",
        parents=[common, study_options()],
        help="Add cells for new values of the grid's axes; finished cells are kept.",
    )
    extend.add_argument(
        "--set",
        dest="overrides",
        action="append",
        required=True,
        metavar="grid.AXIS=VALUES",
        help="An axis with its old and new values, e.g. --set 'grid.seed=[0,1,2,3,4]'. "
        "Repeatable.",
    )
    extend.set_defaults(handler=_extend)


def command_line(command: str, study_name: str, url: str | None, extra: str = "") -> str:
    """``lrstudy COMMAND --storage 'URL' --study NAME``, ready to paste.

    A URL with a password is never printed (masked it would not work if pasted): then the
    line reads the URL from ``$LRSTUDY_STORAGE``, as the launched workers do.
    """
    from storage import mask_url

    tail = f"--study {study_name}{f' {extra}' if extra else ''}"
    if url and "***" not in mask_url(url):
        return f"lrstudy {command} --storage '{url}' {tail}"
    return f"{STORAGE_ENV}=<your URL> lrstudy {command} {tail}"


def launch_line(study_name: str, url: str | None) -> str:
    """The ``lrstudy launch`` line that starts workers on this machine: ``--gpus all`` would be
    refused on a machine without GPUs."""
    return command_line("launch", study_name, url, slots_flag())


def shown_url(study: optuna.Study) -> str | None:
    """The study's storage URL as lrstudy shows it (password masked), if it has one."""
    from storage import rdb_backend

    return getattr(rdb_backend(study._storage), "shown_url", None)


def _open(args: argparse.Namespace) -> tuple[optuna.Study, str]:
    quiet_optuna()
    from storage import open_storage
    from study.grid import load_grid_study

    url = storage_url(args.storage)
    return load_grid_study(open_storage(url, existing=True), args.study), url


def _retry(args: argparse.Namespace) -> int:
    from study.grid import retry_budget, retry_cells

    study, url = _open(args)
    cells = None if args.cells is None else [_cell(text) for text in args.cells]
    retried = retry_cells(study, cells)
    for state in retried.pending:
        print(f"cell {state.key} is {state.state} already (trial {state.trial_number}); left so")
    if not retried.queued:
        if not retried.pending:
            print(f"study {study.study_name!r} has no failed cell; nothing to retry")
        return 0
    keys = ", ".join(state.key for state in retried.queued)
    print(
        f"queued {len(retried.queued)} cell(s) of study {study.study_name!r} again, each with "
        f"a fresh budget of {retry_budget(study)} retries: {keys}"
    )
    print(
        f"finish them: {launch_line(study.study_name, url)} (or run the same `lrstudy run` again)"
    )
    return 0


def _cell(text: str) -> dict[str, Any]:
    """``learning_rate=0.1,seed=2`` (or a cell key, ``learning_rate=0.1__seed=2``) -> params."""
    from study.spec import parse_override

    params: dict[str, Any] = {}
    for part in re.split(r",|__", text):
        axis, sep, value = part.partition("=")
        if not sep or not axis.strip() or not value.strip():
            raise InputError(
                f"--cell expects AXIS=VALUE pairs separated by commas; got {text!r}. "
                "Example: --cell learning_rate=0.1,seed=2."
            )
        params[axis.strip()] = parse_override(f"grid.{axis.strip()}={value.strip()}")[2]
    return params


def _extend(args: argparse.Namespace) -> int:
    from study.grid import extend_grid, grid_of
    from study.spec import parse_override

    parsed = [parse_override(text) for text in args.overrides]
    other = [f"{section}.{key}" for section, key, _ in parsed if section != "grid"]
    if other:
        raise InputError(
            f"extend only adds grid values; {', '.join(other)} cannot change in an existing "
            "study (protocol keys are fixed at creation). Fix: create a new study with "
            "--set study.name=NEW"
        )
    study, url = _open(args)
    before = grid_of(study) or {}
    added = extend_grid(study, {key: value for _, key, value in parsed})
    if not added:
        print(f"study {study.study_name!r} has every value given already; nothing to add")
        return 0
    after = grid_of(study) or {}
    gains = "; ".join(
        f"grid.{axis} gains {', '.join(map(str, values[len(before[axis]) :]))}"
        for axis, values in after.items()
        if len(values) > len(before[axis])
    )
    total = math.prod(len(values) for values in after.values())
    print(f"study {study.study_name!r}: {gains}: {len(added)} new cells, {total} in all")
    # `run` must be given the grown grid too, or it finds another protocol than the stored one.
    sets = " ".join(f"--set {shlex.quote(text)}" for text in args.overrides)
    print(
        f"train them: {launch_line(study.study_name, url)} (or your `lrstudy run` command of "
        f"this study with {sets} added)"
    )
    return 0
