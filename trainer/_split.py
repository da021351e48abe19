"""Patient-disjoint train/val/test splits: the Kaggle folders, the paper's Table 2, or ratios;
and Table 2 drawn by image, the leakage control."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Sequence

import numpy as np

from trainer._errors import InputError
from trainer._patients import CLASS_NAMES, patient_id
from trainer._scan import PART_NAMES, ImageRecord

_logger = logging.getLogger(__name__)

SPLITS = ("kaggle", "paper", "ratios", "paper-by-image")

# Kim & Ye (2022), Table 2: images per part (rows train, val, test) and class (NORMAL, PNEUMONIA).
PAPER_COUNTS = np.array([[790, 2140], [593, 1833], [200, 300]], dtype=np.int64)


def split_records(
    records: Sequence[ImageRecord],
    split: str,
    *,
    seed: int = 0,
    ratios: Sequence[float] = (0.7, 0.15, 0.15),
) -> dict[str, list[int]]:
    """Positions in ``records`` of each part, ascending; no patient is in two parts
    (except in ``kaggle``, which keeps the folders as they are, and ``paper-by-image``).

    ``paper`` gives exactly Table 2 on the full 5,856-image pool and the same per-class
    proportions (largest-remainder rounding) on any other pool; ``ratios`` does the same with
    one proportion per part for both classes. ``paper-by-image`` draws the counts of ``paper``
    image by image, ignoring patients: the leakage control, whose val and test scores show how
    much a split that lets a patient into two parts inflates them. Each is a pure function of
    the records and seed.
    """
    if split == "kaggle":
        if any(record.folder_part is None for record in records):
            raise InputError(
                "split 'kaggle' needs the train/val/test folders, but the data folder is a "
                'flat NORMAL/PNEUMONIA pool; use split "paper" or "ratios".'
            )
        return {
            part: [i for i, record in enumerate(records) if record.folder_part == part]
            for part in PART_NAMES
        }
    if split in ("paper", "paper-by-image"):
        shares = PAPER_COUNTS / PAPER_COUNTS.sum(axis=0)
    elif split == "ratios":
        shares = np.repeat(np.asarray(ratios, dtype=np.float64)[:, None], 2, axis=1)
    else:
        raise InputError(f"split must be one of {', '.join(SPLITS)}; got {split!r}.")
    totals = np.bincount([record.label for record in records], minlength=len(CLASS_NAMES))
    targets = np.stack([_round_shares(shares[:, k], totals[k]) for k in range(2)], axis=1)
    return _split_groups(records, targets, seed, by_image=split == "paper-by-image")


def with_patient_key(records: Sequence[ImageRecord], key: str) -> tuple[ImageRecord, ...]:
    """The records with each patient read from the file name under ``key`` (see
    ``patient_id``); a name outside the dataset's schemes stays its own patient."""
    return tuple(
        dataclasses.replace(
            record,
            patient=patient_id(os.path.splitext(os.path.basename(record.path))[0], key)
            or record.path,
        )
        for record in records
    )


def limit_parts(
    records: Sequence[ImageRecord], parts: dict[str, list[int]], limit: int, seed: int
) -> dict[str, list[int]]:
    """Keep at most ``limit`` images per class in each part, a seeded random choice.

    Any subset of a patient-disjoint part is still patient-disjoint.
    """
    limited: dict[str, list[int]] = {}
    for p, part in enumerate(PART_NAMES):
        kept: list[int] = []
        for label in range(len(CLASS_NAMES)):
            members = [i for i in parts[part] if records[i].label == label]
            if len(members) > limit:
                rng = np.random.default_rng((seed, p, label))
                members = [members[j] for j in rng.choice(len(members), limit, replace=False)]
            kept.extend(members)
        limited[part] = sorted(kept)
    return limited


def shared_patients(records: Sequence[ImageRecord], parts: dict[str, list[int]]) -> list[str]:
    """Patients with images in more than one part, sorted."""
    seen: dict[str, str] = {}
    shared: set[str] = set()
    for part, members in parts.items():
        for i in members:
            patient = records[i].patient
            if seen.setdefault(patient, part) != part:
                shared.add(patient)
    return sorted(shared)


def _round_shares(shares: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``shares`` summing to ``total`` (largest remainder)."""
    exact = shares * total
    counts = np.floor(exact + 1e-9).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _split_groups(
    records: Sequence[ImageRecord], targets: np.ndarray, seed: int, *, by_image: bool
) -> dict[str, list[int]]:
    """Assign whole groups: a patient's images, or each image alone (``by_image``)."""
    patients: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        patients.setdefault(record.path if by_image else record.patient, []).append(i)
    names = sorted(patients)
    counts = np.zeros((len(names), 2), dtype=np.int64)
    for g, name in enumerate(names):
        for i in patients[name]:
            counts[g, records[i].label] += 1
    part_of = _assign(counts, targets, np.random.default_rng(seed))
    parts: dict[str, list[int]] = {part: [] for part in PART_NAMES}
    for g, name in enumerate(names):
        parts[PART_NAMES[part_of[g]]].extend(patients[name])
    result = {part: sorted(members) for part, members in parts.items()}
    _logger.debug("split %d patients into %s", len(names), {k: len(v) for k, v in result.items()})
    return result


def _assign(counts: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Part of each patient group so that per-class part sizes meet ``targets``.

    A seeded shuffle, then the largest groups first, each into the part with the most room left
    relative to its target (so that big and small patients spread proportionally); then local
    repair by moving or swapping groups while that brings the counts closer to the targets.
    Single-image patients, plentiful in this dataset, let the repair reach the exact counts.
    """
    shuffled = rng.permutation(len(counts))
    order = shuffled[np.argsort(-counts[shuffled].sum(axis=1), kind="stable")]
    room = targets.astype(np.int64).copy()
    scale = np.maximum(targets, 1)
    part_of = np.empty(len(counts), dtype=np.int64)
    for g in order:
        need = counts[g]
        fits = (room >= need).all(axis=1)
        relative = (room / scale)[:, need > 0].sum(axis=1)
        candidates = np.flatnonzero(fits) if fits.any() else np.arange(len(room))
        best = candidates[np.argmax(relative[candidates])]
        part_of[g] = best
        room[best] -= need
    _repair(counts, part_of, room)
    return part_of


def _repair(counts: np.ndarray, part_of: np.ndarray, room: np.ndarray) -> None:
    """Move one group, or swap two, between parts while the total miss |room| shrinks."""
    # Groups indexed by (part, count vector): a move depends only on the vector, so the search
    # looks at a few dozen vector pairs instead of all group pairs.
    by_vector: list[dict[tuple[int, ...], list[int]]] = [{} for _ in room]
    for g in range(len(counts)):
        by_vector[part_of[g]].setdefault(tuple(int(c) for c in counts[g]), []).append(g)
    while (move := _improving_move(by_vector, room)) is not None:
        p, q, out, back = move
        for vector, source, target in ((out, p, q), (back, q, p)):
            if any(vector):
                g = by_vector[source][vector].pop()
                if not by_vector[source][vector]:
                    del by_vector[source][vector]
                by_vector[target].setdefault(vector, []).append(g)
                part_of[g] = target
        delta = np.subtract(out, back)
        room[p] += delta
        room[q] -= delta


def _improving_move(
    by_vector: list[dict[tuple[int, ...], list[int]]], room: np.ndarray
) -> tuple[int, int, tuple[int, ...], tuple[int, ...]] | None:
    """The first (p, q, out, back) such that sending a group ``out`` from part p to q and one
    ``back`` from q to p (either may be the empty vector) lowers the miss, or None."""
    none = (0,) * room.shape[1]
    for p, q in itertools.permutations(range(len(room)), 2):
        before = np.abs(room[p]).sum() + np.abs(room[q]).sum()
        if before == 0:
            continue
        for out in (none, *sorted(by_vector[p])):
            for back in (none, *sorted(by_vector[q])):
                delta = np.subtract(out, back)
                after = np.abs(room[p] + delta).sum() + np.abs(room[q] - delta).sum()
                if after < before:
                    return p, q, out, back
    return None
