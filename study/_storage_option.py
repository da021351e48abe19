"""The ``--storage`` option every study command takes: the flag, else ``$LRSTUDY_STORAGE``."""

from __future__ import annotations

import argparse
import os

from trainer import InputError

# Launched workers read the storage URL from here, so a password never shows in `ps`.
STORAGE_ENV = "LRSTUDY_STORAGE"


def add_storage_option(parser: argparse.ArgumentParser, default: str = "") -> None:
    """Add ``--storage URL``; ``default`` names what applies when neither flag nor env is set."""
    fallback = f", else {default}" if default else ""
    parser.add_argument(
        "--storage",
        metavar="URL",
        help=f"Study database (default: ${STORAGE_ENV}{fallback}).",
    )


def storage_url(flag: str | None) -> str:
    """--storage, else $LRSTUDY_STORAGE; one of them is required."""
    url = flag or os.environ.get(STORAGE_ENV)
    if not url:
        raise InputError(
            f"--storage is missing and ${STORAGE_ENV} is not set; "
            "pass --storage URL, e.g. --storage sqlite:///lrstudy.db."
        )
    return url
