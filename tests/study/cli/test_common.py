"""Flags every command shares, accepted before and after the sub-command."""

from __future__ import annotations

import pytest

from study.cli import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "--debug", "status", "--study", "s"],
        ["status", "--study", "s", "-v", "--debug"],
        ["-v", "status", "--study", "s", "--debug"],
        ["data", "check", "DIR", "--verbose", "--debug"],
    ],
)
def test_verbose_and_debug_work_on_either_side_of_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.verbose, args.debug) == (True, True)


def test_without_the_flags_both_are_off() -> None:
    args = build_parser().parse_args(["status", "--study", "s"])
    assert (args.verbose, args.debug) == (False, False)
