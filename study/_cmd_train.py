"""Placeholder until its owner lands the sub-commands; registers nothing."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    del subparsers
