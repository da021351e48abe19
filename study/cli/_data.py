"""``lrstudy data fetch``, ``check`` and ``prepare``: get a dataset, look at it, cache it."""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import TYPE_CHECKING

from study.cli._common import flag_error
from trainer import ConfigError, DataConfig, InputError
from trainer._fetch import KAGGLE, fetch_kaggle, resolve_data

if TYPE_CHECKING:
    from trainer import DataReport

_logger = logging.getLogger(__name__)


_DEFAULTS = DataConfig()


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    data = subparsers.add_parser(
        "data",
        parents=[common],
        help="Download a chest X-ray dataset, check it and build its cache.",
    )
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    fetch = commands.add_parser(
        "fetch",
        parents=[common],
        help="Download the Kaggle chest X-ray dataset (the kaggle extra) and print its folder.",
        description=(
            "Download the Kaggle dataset paultimothymooney/chest-xray-pneumonia with kagglehub, "
            "once: later calls and --data kaggle reuse it. Prints the dataset folder; "
            "credentials and the manual download are in docs/data.md."
        ),
    )
    fetch.add_argument(
        "--dest", metavar="DIR", default=None, help="Download here (default: kagglehub's cache)."
    )
    fetch.add_argument(
        "--force", action="store_true", help="Download again even if it was downloaded before."
    )
    fetch.set_defaults(handler=_fetch)

    check = commands.add_parser(
        "check",
        parents=[common],
        help="Count images per part and class, find undecodable files, check patients.",
        description=(
            "Scan DATA, decode every image quickly and split it as a training run would. "
            "Exit 0 when usable, 2 when not."
        ),
    )
    add_data_arguments(check)
    check.add_argument("--json", action="store_true", help="Print one JSON object.")
    check.set_defaults(handler=_check)

    prepare = commands.add_parser(
        "prepare",
        parents=[common],
        help="Build (or reuse) the preprocessed image cache every trial reads.",
        description="Decode and resize every image of DATA once, in parallel, into the cache.",
    )
    add_data_arguments(prepare)
    prepare.add_argument(
        "--image-size", type=int, required=True, help="Side of the square images in pixels."
    )
    prepare.add_argument(
        "--workers", type=int, default=None, help="Decoding processes (default: one per core)."
    )
    prepare.set_defaults(handler=_prepare)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data options shared by every command that reads a dataset; see ``data_config``."""
    parser.add_argument(
        "data",
        metavar="DATA",
        help=(
            f"Dataset folder (Kaggle or flat layout, or a folder above it), or {KAGGLE!r} for "
            "the download of 'lrstudy data fetch' (downloaded on first use)."
        ),
    )
    parser.add_argument(
        "--split",
        default=_DEFAULTS.split,
        help="paper (Table 2 of the paper; default), kaggle (the folders as they are), ratios, "
        "or paper-by-image (Table 2 drawn by image, ignoring patients: the leakage control).",
    )
    parser.add_argument(
        "--ratios",
        default=",".join(map(str, _DEFAULTS.ratios)),
        help="train,val,test shares for --split ratios.",
    )
    parser.add_argument(
        "--split-seed", type=int, default=_DEFAULTS.split_seed, help="Seed of the split."
    )
    parser.add_argument(
        "--limit-per-class",
        type=int,
        default=_DEFAULTS.limit_per_class,
        help="At most N images per class and part.",
    )
    parser.add_argument(
        "--cache-dir",
        default=_DEFAULTS.cache_dir,
        help="Image cache folder (default: the user cache).",
    )
    parser.add_argument("--skip-bad", action="store_true", help="Leave out undecodable images.")
    parser.add_argument(
        "--patient-key",
        default=_DEFAULTS.patient_key,
        help="person-type (default: person1_bacteria and person1_virus are two patients) or "
        "person (one patient: the merged key of older studies).",
    )


def data_config(args: argparse.Namespace) -> DataConfig:
    """The DataConfig of the options ``add_data_arguments`` added, DATA resolved (``kaggle``:
    the download); InputError when invalid."""
    from trainer import parse_ratios

    try:
        return DataConfig(
            root=resolve_data(args.data),
            split=args.split,
            split_seed=args.split_seed,
            ratios=parse_ratios(args.ratios),
            limit_per_class=args.limit_per_class,
            cache_dir=args.cache_dir,
            skip_bad=args.skip_bad,
            patient_key=args.patient_key,
        )
    except ConfigError as error:
        raise flag_error(error, {"root": "DATA"}) from error


def _fetch(args: argparse.Namespace) -> int:
    print(fetch_kaggle(args.dest, force=args.force))
    return 0


def _check(args: argparse.Namespace) -> int:
    from trainer import check_dataset

    report = check_dataset(data_config(args))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(_table(report))
    if report.problem is not None:
        raise InputError(report.problem)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from trainer import load_dataset

    if args.workers is not None and args.workers < 1:
        raise InputError(
            f"--workers must be a positive integer; got {args.workers}. Leave it out for one "
            "per core."
        )
    config = data_config(args)
    started = time.perf_counter()
    dataset = load_dataset(config, args.image_size, workers=args.workers)
    seconds = time.perf_counter() - started
    size = f"{dataset.cached_images} images at {args.image_size} px"
    rate = dataset.images_per_second
    print(f"cache: {dataset.cache_path}")
    if dataset.cache_built:
        print(f"built: {size} in {seconds:.1f} s, {rate:.0f} images/s")
    else:
        print(f"reused: {size} (built at {rate:.0f} images/s)")
    parts = ", ".join(
        f"{part.name} {len(part)}" for part in (dataset.train, dataset.val, dataset.test)
    )
    print(f"split {config.split} (seed {config.split_seed}): {parts}")
    print(f"fingerprint: {dataset.fingerprint}")
    return 0


_IGNORED_WHY = {
    "duplicate": "another copy of the dataset",
    "macos": "macOS archive metadata",
    "other": "not a class folder (NORMAL, PNEUMONIA)",
}


def _table(report: DataReport) -> str:
    from trainer import CLASS_NAMES

    config = report.config
    header = f"{'part':<8}" + "".join(f"{name:>11}" for name in CLASS_NAMES)
    lines = [
        f"{report.root} ({report.layout} layout), split {config.split}, seed {config.split_seed}"
        + (f", ratios {','.join(map(str, config.ratios))}" if config.split == "ratios" else "")
        + (f", at most {config.limit_per_class} per class" if config.limit_per_class else "")
        + f", patient key {config.patient_key}",
        "",
        f"{header}{'total':>9}{'patients':>10}",
    ]
    totals = [0, 0]
    for name, counts in report.parts.items():
        totals = [total + count for total, count in zip(totals, counts.images, strict=True)]
        cells = "".join(f"{count:>11}" for count in counts.images)
        lines.append(f"{name:<8}{cells}{sum(counts.images):>9}{counts.patients:>10}")
    cells = "".join(f"{count:>11}" for count in totals)
    lines += [f"{'total':<8}{cells}{sum(totals):>9}", ""]
    shared = report.shared_patients
    lines.append(f"patients in two parts: {len(shared)}")
    if shared:
        lines[-1] += f" ({', '.join(shared[:5])}{', ...' if len(shared) > 5 else ''})"
    if report.leak:
        lines.append(report.leak)
    for part in report.missing_parts:
        lines.append(f"folder {part}/ is absent: the {part} part of --split kaggle is empty")
    if report.unnamed:
        lines.append(
            f"names outside the dataset's schemes: {report.unnamed} (each its own patient)"
        )
    lines.append(f"ignored files (hidden or not .jpeg/.jpg/.png): {len(report.ignored)}")
    for folder in report.ignored_folders:
        why = _IGNORED_WHY[folder.reason]
        lines.append(f"ignored folder {folder.path}/: {why} ({folder.files} files, not scanned)")
    verdict = "left out (--skip-bad)" if config.skip_bad else "the dataset is not usable"
    lines.append(f"undecodable images: {len(report.bad)}" + (f", {verdict}" if report.bad else ""))
    lines += [f"  {path}: {reason}" for path, reason in sorted(report.bad.items())]
    return "\n".join(lines)
