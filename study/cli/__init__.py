"""The ``lrstudy`` command: one parser, one module per group of sub-commands, one-line errors.

Nothing imports this package but the console script: it is the edge where flags, environment
variables, logging and exit codes live.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from storage import StorageError, StorageUnreachable
from study import _exit
from study.cli._common import common_options
from trainer import InputError

# Each module holds the sub-commands of one job and exposes ``register(subparsers, common)``.
# They import heavy libraries (Keras, Optuna) inside their handlers, so ``lrstudy --help`` is fast.
_COMMAND_MODULES = (
    "study.cli._data",
    "study.cli._train",
    "study.cli._create",
    "study.cli._workers",
    "study.cli._status",
    "study.cli._lifecycle",
    "study.cli._results",
    "study.cli._lr_find",
    "study.cli._slurm",
)

_logger = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other error a user can cause; sub-parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(_exit.USAGE, f"lrstudy: error: {message}. See `{self.prog} --help`.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lrstudy",
        description="Learning-rate studies of Inception V3 on chest X-rays, run with Optuna.",
        parents=[common_options(top=True)],
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_options(top=False)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers, common)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; errors end in one line on stderr: exit code 2 for what the user
    must fix, 75 for a study database that did not answer (running again later can help)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.handler(args) or 0)
    except (InputError, StorageError) as error:
        if args.debug:
            raise
        print(f"lrstudy: error: {error}", file=sys.stderr)
        return _exit.UNAVAILABLE if isinstance(error, StorageUnreachable) else _exit.USAGE
    except KeyboardInterrupt:
        print("lrstudy: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`lrstudy status | head`): stop quietly, as a killed pipe writer does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as error:  # last: a re-raise here skips the clauses after it
        line = None if args.debug else _connection_lost(error)
        if line is None:
            raise
        print(f"lrstudy: error: {line}", file=sys.stderr)
        return _exit.UNAVAILABLE


def _connection_lost(error: Exception) -> str | None:
    """One line for a database connection lost in the middle of a command, else None.

    Opening the storage already words an unreachable server; this covers a server that goes
    away later (a restart, a failover), where Optuna and SQLAlchemy raise their own errors.
    """
    from storage import lost_connection

    reason = lost_connection(error)
    if reason is None:
        return None
    return (
        f"lost the connection to the study database ({reason}); what was stored stays "
        "stored: run the same command again once the server answers"
    )


if __name__ == "__main__":
    sys.exit(main())
