"""Splits: Table 2 exactly on a 5,856-name pool, proportions elsewhere, never a shared patient."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from tests.conftest import paper_pool
from trainer import PAPER_COUNTS, PART_NAMES, ImageRecord, InputError, split_records
from trainer._split import limit_parts, shared_patients, with_patient_key


def _counts(records, parts) -> dict[str, tuple[int, int]]:
    counts = {}
    for name, members in parts.items():
        labels = Counter(records[i].label for i in members)
        counts[name] = (labels[0], labels[1])
    return counts


def _assert_partition(records, parts) -> None:
    everything = sorted(i for members in parts.values() for i in members)
    assert everything == list(range(len(records)))  # every image once
    assert shared_patients(records, parts) == []


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_paper_split_gives_table_2_exactly_on_the_full_pool(seed: int) -> None:
    records = paper_pool(seed)
    assert len(records) == 5856
    assert len({record.patient for record in records}) < 5856 - 1000  # real patient groups
    parts = split_records(records, "paper", seed=seed)
    assert _counts(records, parts) == {
        name: tuple(int(n) for n in row)
        for name, row in zip(PART_NAMES, PAPER_COUNTS, strict=True)
    }
    _assert_partition(records, parts)


def _shared_numbers(seed: int) -> tuple[ImageRecord, ...]:
    """``paper_pool`` with PNEUMONIA person numbers halved, so that about half the numbers carry
    a bacterial and a viral series, as in the real dataset (808 of 1,642 in its train folder)."""
    renamed = []
    for record in paper_pool(seed):
        folder, name = record.path.split("/")
        if name.startswith("person"):
            number, rest = name[len("person") :].split("_", 1)
            name = f"person{int(number) // 2}_{rest}"
        renamed.append(dataclasses.replace(record, path=f"{folder}/{name}"))
    return tuple(renamed)


@pytest.mark.parametrize("key", ["person-type", "person"])
def test_paper_split_gives_table_2_and_no_shared_patient_under_either_key(key: str) -> None:
    records = with_patient_key(_shared_numbers(0), key)
    parts = split_records(records, "paper", seed=0)
    assert _counts(records, parts) == {
        name: tuple(int(n) for n in row)
        for name, row in zip(PART_NAMES, PAPER_COUNTS, strict=True)
    }
    _assert_partition(records, parts)


def test_the_keys_differ_only_where_one_number_has_both_infection_types() -> None:
    records = _shared_numbers(0)
    by_type, by_person = (
        with_patient_key(records, "person-type"),
        with_patient_key(records, "person"),
    )
    types_of: dict[str, set[str]] = {}
    for record in by_type:
        number, _, kind = record.patient.partition("_")
        types_of.setdefault(number, set()).add(kind)
    both = sum(kinds == {"bacteria", "virus"} for kinds in types_of.values())
    assert both > 300
    assert len({r.patient for r in by_type}) - len({r.patient for r in by_person}) == both
    # Under the finer key a split may put person N's bacterial and viral series apart.
    parts = split_records(by_type, "paper", seed=0)
    assert shared_patients(by_person, parts)


def test_paper_by_image_gives_table_2_and_splits_patients() -> None:
    records = paper_pool(0)
    parts = split_records(records, "paper-by-image", seed=0)
    assert _counts(records, parts) == _counts(records, split_records(records, "paper", seed=0))
    assert sorted(i for members in parts.values() for i in members) == list(range(len(records)))
    assert len(shared_patients(records, parts)) > 300  # the leak it is there to measure
    assert split_records(records, "paper-by-image", seed=0) == parts


def test_split_is_a_pure_function_of_records_and_seed() -> None:
    records = paper_pool(0)
    first = split_records(records, "paper", seed=3)
    assert split_records(list(records), "paper", seed=3) == first
    assert split_records(records, "paper", seed=4) != first
    assert all(members == sorted(members) for members in first.values())


def test_paper_split_keeps_the_proportions_on_another_pool() -> None:
    records = paper_pool(2)[::2]  # 2,928 images, patients cut at random
    parts = split_records(records, "paper", seed=0)
    counts = _counts(records, parts)
    totals = Counter(record.label for record in records)
    for label in (0, 1):
        expected = PAPER_COUNTS[:, label] / PAPER_COUNTS[:, label].sum() * totals[label]
        got = np.array([counts[name][label] for name in PART_NAMES])
        assert got.sum() == totals[label]
        assert np.abs(got - expected).max() < 1  # rounded, never further off
    _assert_partition(records, parts)


def test_ratios_split_is_stratified_and_grouped() -> None:
    records = paper_pool(1)
    parts = split_records(records, "ratios", seed=0, ratios=(0.6, 0.3, 0.1))
    counts = _counts(records, parts)
    assert counts["train"] == (950, 2564)  # 0.6 * 1583 = 949.8, 0.6 * 4273 = 2563.8
    assert counts["val"] == (475, 1282)
    assert counts["test"] == (158, 427)
    _assert_partition(records, parts)


def test_groups_without_single_images_still_never_split_a_patient() -> None:
    # Only pairs of images: odd targets (0.15 * 60 = 9) cannot be met exactly.
    records = [
        ImageRecord(
            path=f"{label}/p{label}_{i // 2}_{i}", label=label, patient=f"p{label}_{i // 2}"
        )
        for label, count in ((0, 40), (1, 60))
        for i in range(count)
    ]
    parts = split_records(records, "ratios", seed=5, ratios=(0.7, 0.15, 0.15))
    _assert_partition(records, parts)
    counts = _counts(records, parts)
    assert abs(counts["train"][0] - 28) <= 1 and abs(counts["train"][1] - 42) <= 1


def test_a_patient_with_both_labels_stays_in_one_part() -> None:
    records = paper_pool(0)[:300] + tuple(
        ImageRecord(path=f"mixed/{label}_{i}", label=label, patient="person77777")
        for label in (0, 1)
        for i in range(3)
    )
    parts = split_records(records, "paper", seed=0)
    _assert_partition(records, parts)


def test_kaggle_split_keeps_the_folders_and_refuses_a_flat_pool() -> None:
    records = [
        ImageRecord(
            path=f"{part}/NORMAL/IM-{i:04d}-0001.jpeg",
            label=0,
            patient=f"IM-{i:04d}",
            folder_part=part,
        )
        for i, part in enumerate(["train", "train", "val", "test", "train"])
    ]
    parts = split_records(records, "kaggle")
    assert parts == {"train": [0, 1, 4], "val": [2], "test": [3]}
    flat = [ImageRecord(path="NORMAL/IM-0001-0001.jpeg", label=0, patient="IM-0001")]
    with pytest.raises(
        InputError, match='flat NORMAL/PNEUMONIA pool; use split "paper" or "ratios"'
    ):
        split_records(flat, "kaggle")


def test_shared_patients_are_found() -> None:
    records = [
        ImageRecord(
            path=f"{part}/PNEUMONIA/person1_virus_{i}.jpeg",
            label=1,
            patient="person1",
            folder_part=part,
        )
        for i, part in enumerate(["train", "test"])
    ]
    assert shared_patients(records, split_records(records, "kaggle")) == ["person1"]


def test_limit_per_class_takes_a_seeded_subset_of_each_part() -> None:
    records = paper_pool(0)
    parts = split_records(records, "paper", seed=0)
    limited = limit_parts(records, parts, 150, seed=0)
    for name in PART_NAMES:
        assert set(limited[name]) <= set(parts[name])
        assert _counts(records, {name: limited[name]})[name] == (150, 150)
        assert limited[name] == sorted(limited[name])
    assert limit_parts(records, parts, 150, seed=0) == limited
    assert limit_parts(records, parts, 150, seed=1) != limited
    # Fewer images than the limit: all of them.
    assert limit_parts(records, parts, 250, seed=0)["test"].count
    assert _counts(records, limit_parts(records, parts, 250, seed=0))["test"] == (200, 250)
