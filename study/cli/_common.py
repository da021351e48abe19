"""What every command shares: common flags, the study-selecting options, and value lookups.

Values are resolved in one order everywhere: a flag, then the environment, then the spec.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from trainer import ConfigError, InputError

if TYPE_CHECKING:
    from study.spec import StudySpec

# Launched workers read the storage URL from here, so a password never shows in `ps`.
STORAGE_ENV = "LRSTUDY_STORAGE"


def common_options(*, top: bool) -> argparse.ArgumentParser:
    """``-v`` and ``--debug``, for the top parser and (``top=False``) every sub-command.

    A sub-command's copy defaults to "not given", so ``lrstudy -v status`` and
    ``lrstudy status -v`` both work and neither undoes the other.
    """
    parser = argparse.ArgumentParser(add_help=False)
    default = False if top else argparse.SUPPRESS
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="Log debug messages."
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="Show the full traceback of an error.",
    )
    return parser


def add_storage_option(parser: argparse.ArgumentParser, default: str = "") -> None:
    """Add ``--storage URL``; ``default`` names what applies when neither flag nor env is set."""
    fallback = f", else {default}" if default else ""
    parser.add_argument(
        "--storage",
        metavar="URL",
        help=f"Study database (default: ${STORAGE_ENV}{fallback}).",
    )


def study_options() -> argparse.ArgumentParser:
    """``--storage`` and ``--study``: the options of every command on an existing study."""
    parser = argparse.ArgumentParser(add_help=False)
    add_storage_option(parser)
    parser.add_argument("--study", required=True, metavar="NAME", help="Study name.")
    return parser


def storage_url(flag: str | None, spec_value: str | None = None) -> str:
    """--storage, else $LRSTUDY_STORAGE, else the spec's; one of them is required."""
    url = flag or os.environ.get(STORAGE_ENV) or spec_value
    if not url:
        raise InputError(
            f"--storage is missing and ${STORAGE_ENV} is not set; "
            "pass --storage URL, e.g. --storage sqlite:///lrstudy.db."
        )
    return url


def slots_flag() -> str:
    """The workers' flag of a hint that works here: ``--gpus all`` where the launcher finds a GPU
    (in an inherited ``CUDA_VISIBLE_DEVICES``, else on the machine), else one CPU worker."""
    from study.launch import plan_slots

    return "--gpus all" if plan_slots()[0].gpu is not None else "--workers 1"


def flag_error(error: ConfigError, flags: dict[str, str] | None = None) -> InputError:
    """A trainer config error worded with the flag that set the value (``--image-size``)."""
    name = (flags or {}).get(error.key, f"--{error.key.replace('_', '-')}")
    return InputError(f"{error.worded(name)}.")


def data_folder(value: str | None) -> str | None:
    """A --data value or data.root with ``kaggle`` made the downloaded dataset's folder."""
    from trainer._fetch import resolve_data

    return None if value is None else resolve_data(value)


def absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def quiet_optuna() -> None:
    """Our own log lines say what happens; Optuna's repeat them, and its experimental-API
    warnings (heartbeats, metric names) speak to library developers, not to our users."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def fetch_weights(spec: StudySpec) -> None:
    """Download the ImageNet weights once, here, before any worker starts: workers starting
    together would race on Keras's download, and unreachable weights would fail every cell
    until its retries are spent, leaving the study failed for good. (On a cluster, the login
    node, which reaches the internet where compute nodes may not, fills the shared cache.)"""
    from trainer._weights import fetch_imagenet_weights

    if spec.train.weights == "imagenet" or "imagenet" in spec.grid.get("weights", ()):
        try:
            fetch_imagenet_weights()
        except InputError as error:
            raise InputError(f"{error}: in a study, --set train.weights=none or =PATH") from error
