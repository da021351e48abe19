"""The study spec: one TOML file (or preset) fixes a study's grid and protocol.

It knows the trainer's configs and nothing of Optuna: a spec becomes ``CellConfig``s here, and
the grid room stores it with the study.
"""

from study.spec._cells import cell_config, cell_key, check_cells
from study.spec._presets import PRESETS, QUICK_NOTE, preset_mapping, preset_toml
from study.spec._spec import (
    LOCATION_KEYS,
    StudySection,
    StudySpec,
    WorkerSection,
    load_preset,
    load_spec,
    parse_override,
    protocol_differences,
    spec_from_mapping,
)

__all__ = [
    "LOCATION_KEYS",
    "PRESETS",
    "QUICK_NOTE",
    "StudySection",
    "StudySpec",
    "WorkerSection",
    "cell_config",
    "cell_key",
    "check_cells",
    "load_preset",
    "load_spec",
    "parse_override",
    "preset_mapping",
    "preset_toml",
    "protocol_differences",
    "spec_from_mapping",
]
