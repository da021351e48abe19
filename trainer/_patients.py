"""Class labels and patient ids read from the chest X-ray file names."""

from __future__ import annotations

import re

# Index = label: NORMAL = 0, PNEUMONIA = 1, as the paper and the Kaggle folders name them.
CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")

# How PNEUMONIA names map to patients. Kermany et al. numbered bacterial and viral cases in two
# separate series, so person1946_bacteria and person1946_virus are two patients ("person-type",
# the default; docs/data.md has the evidence); "person" merges them, the conservative key that
# lrstudy used before it knew this.
PATIENT_KEYS = ("person-type", "person")
DEFAULT_PATIENT_KEY = "person-type"

# The dataset's three naming schemes. Images of one patient share the captured prefix, e.g.
# IM-0115-0001 -> IM-0115, NORMAL2-IM-1427-0001-0002 -> NORMAL2-IM-1427,
# person1946_bacteria_4874 -> person1946_bacteria (key "person": person1946).
_NORMAL_PATTERN = re.compile(r"((?:NORMAL2-)?IM-\d+)(?:-\d+)+")
_PNEUMONIA_PATTERN = re.compile(r"(person\d+)_(bacteria|virus)(?:_\d+)+")


def patient_id(stem: str, key: str = DEFAULT_PATIENT_KEY) -> str | None:
    """The patient a file name (without extension) belongs to, or None for an unknown scheme.

    Several images of one patient must stay in one part of a split; a name outside the three
    schemes gives no such link, so the caller treats that image as its own patient.

    Args:
        stem: The file name without its extension.
        key: ``"person-type"`` (person number and infection type) or ``"person"`` (the number
            alone). Defaults to `"person-type"`.
    """
    if key not in PATIENT_KEYS:
        raise ValueError(f"patient key must be one of {', '.join(PATIENT_KEYS)}; got {key!r}")
    match = _NORMAL_PATTERN.fullmatch(stem)
    if match:
        return match.group(1)
    match = _PNEUMONIA_PATTERN.fullmatch(stem)
    if match:
        return match.group(1) if key == "person" else f"{match.group(1)}_{match.group(2)}"
    return None
