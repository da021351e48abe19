"""The data of a cell: scan, split and cache put together into train, val and test parts."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np

from trainer import _checks
from trainer._cache import PREPROCESS_VERSION, open_pool_cache
from trainer._errors import InputError
from trainer._patients import DEFAULT_PATIENT_KEY, PATIENT_KEYS
from trainer._scan import PART_NAMES, ImageRecord, scan
from trainer._split import SPLITS, limit_parts, split_records, with_patient_key

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    """Which images a cell uses and how they are split.

    Args:
        root: Dataset folder, in the Kaggle layout ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}``
            or flat ``ROOT/{NORMAL,PNEUMONIA}``; each machine may have its own. Defaults to
            `None` (not known yet: a study's spec may leave it to ``--data``).
        split: ``"paper"`` (Table 2 of Kim & Ye; proportional on another pool), ``"kaggle"``
            (the folders as they are), ``"ratios"``, or ``"paper-by-image"`` (Table 2's counts
            drawn by image, ignoring patients: a leakage control). Defaults to `"paper"`.
        split_seed: Seed of the patient assignment and of ``limit_per_class``. Defaults to `0`.
        ratios: Train, val and test shares for ``split="ratios"``, each > 0, summing to 1.
            Defaults to `(0.7, 0.15, 0.15)`.
        limit_per_class: At most this many images per class in each part, for quick runs.
            Defaults to `None` (all).
        cache_dir: Folder of the preprocessed image cache. Defaults to `None`, the per-user
            cache folder.
        skip_bad: Leave out undecodable images instead of refusing the dataset.
            Defaults to `False`.
        patient_key: What makes a PNEUMONIA patient: ``"person-type"`` (person1946_bacteria
            and person1946_virus are two patients, as the dataset numbers them) or
            ``"person"`` (one, the merged key of studies made before this key existed).
            Defaults to `"person-type"`.
    """

    root: str | None = None
    split: str = "paper"
    split_seed: int = 0
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    limit_per_class: int | None = None
    cache_dir: str | None = None
    skip_bad: bool = False
    patient_key: str = DEFAULT_PATIENT_KEY

    def __post_init__(self) -> None:
        _checks.optional(_checks.string)("root", self.root)
        _checks.choice(SPLITS)("split", self.split)
        _checks.integer(0)("split_seed", self.split_seed)
        object.__setattr__(self, "ratios", _checks.ratios("ratios", self.ratios))
        _checks.optional(_checks.integer(1))("limit_per_class", self.limit_per_class)
        _checks.optional(_checks.string)("cache_dir", self.cache_dir)
        _checks.boolean("skip_bad", self.skip_bad)
        _checks.choice(PATIENT_KEYS)("patient_key", self.patient_key)

    def folder(self) -> str:
        """``root``, which reading the data needs."""
        if self.root is None:
            raise InputError(
                "the dataset folder is not set; pass DATA (--data DIR) or set data.root"
            )
        return self.root


@dataclass(frozen=True, eq=False)
class Part:
    """One of train, val and test: rows of the shared image cache with their labels."""

    name: str
    images: np.ndarray  # the whole pool's read-only memmap, uint8 (N, s, s, 3)
    indices: np.ndarray  # int64 rows of ``images`` in this part, ascending (path order)
    labels: np.ndarray  # uint8, aligned with ``indices``; NORMAL = 0, PNEUMONIA = 1
    paths: tuple[str, ...]  # relative to the data root, aligned with ``indices``

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True, eq=False)
class Dataset:
    """The three parts of a cell's data and what identifies them."""

    train: Part
    val: Part
    test: Part
    image_size: int
    fingerprint: str  # hash of what the model sees: each part's files, the size, the split
    cache_path: str
    cached_images: int = 0  # rows in the cache: every scanned image, all parts together
    cache_built: bool = False  # whether this call built the cache (False: reused)
    images_per_second: float = 0.0  # decoding speed of the build, by whoever built it


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> (0.7, 0.15, 0.15), checked as DataConfig checks ``ratios``."""
    try:
        values = tuple(float(value) for value in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise InputError(
            f"--ratios must be three comma-separated numbers (train,val,test); got {text!r}. "
            "Use e.g. --ratios 0.7,0.15,0.15."
        )
    return _checks.ratios("ratios", values)


def load_dataset(config: DataConfig, image_size: int, *, workers: int | None = None) -> Dataset:
    """Scan, split, build or reuse the image cache, and return the parts.

    Args:
        config: The data options.
        image_size: Side of the square images in pixels, at least 8.
        workers: Processes decoding images when the cache is built. Defaults to `None`, one per
            core (this process alone for a few hundred images).

    Raises:
        InputError: a problem the user can fix: a missing folder, an undecodable image (unless
            ``config.skip_bad``), a split that does not fit the layout.
    """
    if not _is_int(image_size) or image_size < 8:
        raise InputError(
            f"image_size must be an integer of at least 8 pixels; got {image_size!r}. "
            "Use e.g. 224."
        )
    scanned = scan(config.folder())
    records = with_patient_key(scanned.records, config.patient_key)
    if config.split == "kaggle":
        split_records(records, "kaggle")  # refuse a flat pool before decoding anything
    cache = open_pool_cache(scanned.root, records, image_size, config.cache_dir, workers=workers)
    bad_rows = {row for row, path in enumerate(cache.paths) if path in cache.bad}
    if bad_rows and not config.skip_bad:
        raise InputError(undecodable_message(cache.bad))
    parts = choose_parts(records, config, bad_rows)
    built = {
        name: Part(
            name=name,
            images=cache.images,
            indices=np.asarray(rows, dtype=np.int64),
            labels=np.asarray([records[i].label for i in rows], dtype=np.uint8),
            paths=tuple(records[i].path for i in rows),
        )
        for name, rows in parts.items()
    }
    fingerprint = _fingerprint(records, parts, config, image_size)
    _logger.info(
        "dataset %s, split %s (seed %d): %s; fingerprint %s",
        scanned.root,
        config.split,
        config.split_seed,
        ", ".join(f"{name} {len(part)}" for name, part in built.items()),
        fingerprint,
    )
    return Dataset(
        train=built["train"],
        val=built["val"],
        test=built["test"],
        image_size=image_size,
        fingerprint=fingerprint,
        cache_path=cache.path,
        cached_images=len(cache.paths),
        cache_built=cache.built,
        images_per_second=cache.images_per_second,
    )


def check_layout(config: DataConfig) -> None:
    """List and split the folder as ``load_dataset`` will, decoding no image: a folder of
    another layout, a missing class or a split that cannot be drawn raises ``InputError`` in
    a fraction of a second, before a study spends a cell on it."""
    records = with_patient_key(scan(config.folder()).records, config.patient_key)
    choose_parts(records, config, bad_rows=set())


def choose_parts(
    records: tuple[ImageRecord, ...], config: DataConfig, bad_rows: set[int]
) -> dict[str, list[int]]:
    """Rows of each part: the split of the decodable images, then the per-class limit.

    ``records`` carry the patients of ``config.patient_key`` (``with_patient_key``).
    """
    usable = [i for i in range(len(records)) if i not in bad_rows]
    kept = [records[i] for i in usable]
    parts = split_records(kept, config.split, seed=config.split_seed, ratios=config.ratios)
    if config.limit_per_class is not None:
        parts = limit_parts(kept, parts, config.limit_per_class, config.split_seed)
    return {name: [usable[i] for i in parts[name]] for name in PART_NAMES}


def undecodable_message(bad: dict[str, str]) -> str:
    """One line naming the undecodable images (the first few) and the two ways out."""
    shown = "; ".join(f"{path} ({reason})" for path, reason in sorted(bad.items())[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return (
        f"{len(bad)} image(s) cannot be decoded: {shown}{more}; replace or remove them, or "
        "pass --skip-bad (data.skip_bad = true in a spec) to leave them out."
    )


def _fingerprint(
    records: tuple[ImageRecord, ...],
    parts: dict[str, list[int]],
    config: DataConfig,
    image_size: int,
) -> str:
    """Hash of the data the model sees, and nothing of where it lies: a copy of the dataset at
    another path or with new mtimes has the same fingerprint, so a cell resumes there."""
    described = {
        "preprocess_version": PREPROCESS_VERSION,
        "image_size": image_size,
        "split": config.split,
        "split_seed": config.split_seed,
        "ratios": list(config.ratios) if config.split == "ratios" else None,
        "limit_per_class": config.limit_per_class,
        "parts": {
            name: [[records[i].path, records[i].label, records[i].size] for i in rows]
            for name, rows in parts.items()
        },
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
