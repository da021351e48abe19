"""What ``lrstudy data check`` reports: counts per part and class, patients, problems."""

from __future__ import annotations

from dataclasses import dataclass

from trainer._dataset import DataConfig, choose_parts, undecodable_message
from trainer._decode import find_undecodable
from trainer._patients import CLASS_NAMES
from trainer._scan import PART_NAMES, IgnoredFolder, scan
from trainer._split import shared_patients, with_patient_key


@dataclass(frozen=True)
class PartCounts:
    """Images per class and distinct patients in one part."""

    images: tuple[int, int]  # NORMAL, PNEUMONIA
    patients: int


@dataclass(frozen=True)
class DataReport:
    """The facts about a dataset and a split, before any image is cached."""

    root: str
    layout: str  # "kaggle" | "flat"
    config: DataConfig
    parts: dict[str, PartCounts]
    shared_patients: tuple[str, ...]  # ids (of config.patient_key) with images in two parts
    ignored: tuple[str, ...]  # hidden or non-image files
    ignored_folders: tuple[IgnoredFolder, ...]  # duplicate copies and __MACOSX, not scanned
    bad: dict[str, str]  # undecodable image -> reason
    missing_parts: tuple[str, ...]  # absent Kaggle part folders (empty for the kaggle split)
    unnamed: int  # images outside the three naming schemes, each its own patient

    @property
    def problem(self) -> str | None:
        """Why the dataset is not usable as configured, in one line, or None."""
        if self.bad and not self.config.skip_bad:
            return undecodable_message(self.bad)
        empty = [name for name in ("train", "val") if sum(self.parts[name].images) == 0]
        if empty:
            return (
                f"the {' and '.join(empty)} part(s) would hold no image with split "
                f"{self.config.split!r}; use --split paper or --split ratios to pool the folders."
            )
        one_class = [
            f"{name} {class_name}"
            for name in ("train", "val")
            for class_name, count in zip(CLASS_NAMES, self.parts[name].images, strict=True)
            if count == 0
        ]
        if one_class:
            fix = (
                "use --split paper or --split ratios to pool the folders"
                if self.config.split == "kaggle"
                else "add images of that class"
            )
            return (
                f"the split {self.config.split!r} would leave no {' and no '.join(one_class)} "
                f"image, so training or its validation sees one class; {fix}."
            )
        return None

    @property
    def leak(self) -> str | None:
        """Why val and test scores of this split are optimistic, in one line; None for a split
        that keeps every patient in one part."""
        count = len(self.shared_patients)
        if self.config.split == "paper-by-image":
            return (
                f"LEAKS: split 'paper-by-image' ignores patients on purpose ({count} patients "
                "have images in two parts), so val/test scores are inflated; it is the leakage "
                "control, to compare with a study of --split paper"
            )
        if not count:
            return None
        return (
            f"LEAKS: {count} patients have images in two parts of split "
            f"{self.config.split!r}, so val/test scores are inflated; --split paper and ratios "
            "are patient-disjoint"
        )

    def to_json(self) -> dict:
        """The report as one JSON object: the keys ``parts``, ``shared_patients``, ``ignored``
        and ``bad`` as documented, plus the settings and the smaller findings; ``leak`` is the
        line of ``leak``, None for a patient-disjoint split.

        ``ignored`` holds ``files`` (hidden or non-image files in the class folders) and
        ``folders`` (each left out whole: ``path`` from the root, ``reason`` "duplicate",
        "macos" or "other", ``files`` under it)."""
        return {
            "root": self.root,
            "layout": self.layout,
            "split": self.config.split,
            "split_seed": self.config.split_seed,
            "ratios": list(self.config.ratios) if self.config.split == "ratios" else None,
            "limit_per_class": self.config.limit_per_class,
            "patient_key": self.config.patient_key,
            "parts": {
                name: {
                    **dict(zip(CLASS_NAMES, counts.images, strict=True)),
                    "patients": counts.patients,
                }
                for name, counts in self.parts.items()
            },
            "shared_patients": len(self.shared_patients),
            "shared_patient_ids": list(self.shared_patients),
            "leak": self.leak,
            "ignored": {
                "files": len(self.ignored),
                "folders": [
                    {"path": folder.path, "reason": folder.reason, "files": folder.files}
                    for folder in self.ignored_folders
                ],
            },
            "bad": sorted(self.bad),
            "bad_reasons": dict(sorted(self.bad.items())),
            "skip_bad": self.config.skip_bad,
            "missing_parts": list(self.missing_parts),
            "unrecognised_names": self.unnamed,
            "usable": self.problem is None,
        }


def check_dataset(config: DataConfig, *, workers: int | None = None) -> DataReport:
    """Scan, decode every image (quickly) and split, as ``load_dataset`` would, without caching.

    Raises:
        InputError: the folder or the split cannot be used at all (a missing class folder,
            the kaggle split of a flat pool). Undecodable images are reported, not raised.
    """
    scanned = scan(config.folder())
    records = with_patient_key(scanned.records, config.patient_key)
    paths = [record.path for record in records]
    bad = find_undecodable(scanned.root, paths, workers=workers)
    bad_rows = {i for i, record in enumerate(records) if record.path in bad}
    parts = choose_parts(records, config, bad_rows if config.skip_bad else set())
    counts = {}
    for name in PART_NAMES:
        members = [records[i] for i in parts[name]]
        counts[name] = PartCounts(
            images=(
                sum(record.label == 0 for record in members),
                sum(record.label == 1 for record in members),
            ),
            patients=len({record.patient for record in members}),
        )
    return DataReport(
        root=scanned.root,
        layout=scanned.layout,
        config=config,
        parts=counts,
        shared_patients=tuple(shared_patients(records, parts)),
        ignored=scanned.ignored,
        ignored_folders=scanned.ignored_folders,
        bad=bad,
        missing_parts=scanned.missing_parts,
        unnamed=scanned.unnamed,
    )
