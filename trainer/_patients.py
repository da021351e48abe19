"""Class labels and patient ids read from the chest X-ray file names."""

from __future__ import annotations

import re

# Index = label: NORMAL = 0, PNEUMONIA = 1, as the paper and the Kaggle folders name them.
CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")

# The dataset's three naming schemes. Images of one patient share the captured prefix, e.g.
# IM-0115-0001 -> IM-0115, NORMAL2-IM-1427-0001-0002 -> NORMAL2-IM-1427,
# person1946_bacteria_4874 (or person447_virus_921_1) -> person1946.
_PATIENT_PATTERNS = (
    re.compile(r"((?:NORMAL2-)?IM-\d+)(?:-\d+)+"),
    re.compile(r"(person\d+)_(?:bacteria|virus)(?:_\d+)+"),
)


def patient_id(stem: str) -> str | None:
    """The patient a file name (without extension) belongs to, or None for an unknown scheme.

    Several images of one patient must stay in one part of a split; a name outside the three
    schemes gives no such link, so the caller treats that image as its own patient.
    """
    for pattern in _PATIENT_PATTERNS:
        match = pattern.fullmatch(stem)
        if match:
            return match.group(1)
    return None
