"""``lrstudy status``: the grid cell by cell, read from the study database."""

from __future__ import annotations

import argparse

from study.cli._common import quiet_optuna, storage_url, study_options
from study.cli._lifecycle import command_line


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    status = subparsers.add_parser(
        "status", parents=[common, study_options()], help="Show the grid: each cell's state."
    )
    status.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    quiet_optuna()
    from storage import open_storage
    from study.grid import load_grid_study
    from study.results import failure_lines, status_table, study_line

    url = storage_url(args.storage)
    study = load_grid_study(open_storage(url, existing=True), args.study)
    print(status_table(study))
    print(f"\n{study_line(study)}")
    failures = failure_lines(study)
    if failures:
        print("\n".join(failures))
        print(f"fix the cause, then: {command_line('retry', study.study_name, url)}")
    return 0
