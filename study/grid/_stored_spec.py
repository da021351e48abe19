"""A study made from a spec: the spec stored with it, and read back by every worker."""

from __future__ import annotations

import copy
import dataclasses
import logging

import optuna
from optuna.storages import BaseStorage

from study.grid import _attrs
from study.grid._grid import create_grid_study, load_grid_study
from study.spec import StudySpec, protocol_differences, spec_from_mapping
from study.spec._spec import SPEC_KEYS_ADDED_LATER
from trainer import InputError
from trainer._config import KEYS_ADDED_LATER

_logger = logging.getLogger(__name__)


def create_from_spec(storage: BaseStorage, spec: StudySpec) -> tuple[optuna.Study, bool]:
    """Create the spec's grid study, or open it when it exists with the same protocol.

    Returns the study and whether this call created it. The spec (without its storage URL, so
    no password is stored) and its fingerprint go into the study's user attributes, and its
    ``worker.max_retries`` becomes the study's retry budget.

    Raises:
        InputError: the study exists with another protocol (the message names the keys that
            differ), or was not made from a spec.
    """
    name = spec.study.name
    try:
        existing = load_grid_study(storage, name)
    except InputError:
        existing = None
    if existing is None:
        written = spec.to_dict()
        del written["study"]["storage"]
        study = create_grid_study(
            storage,
            name,
            {axis: list(values) for axis, values in spec.grid.items()},
            metric=spec.study.objective,
            max_retries=spec.worker.max_retries,
            user_attrs={_attrs.SPEC: written, _attrs.SPEC_FINGERPRINT: spec.fingerprint()},
        )
    else:
        study = existing
    # Also when we just created it: a concurrent creator with another spec may have won. A spec
    # stored before some keys existed has another fingerprint but, filled in, no difference.
    stored = spec_from_study(study, spec.study.storage)
    if study.user_attrs.get(_attrs.SPEC_FINGERPRINT) != spec.fingerprint():
        differences = protocol_differences(stored, spec)
        if differences:
            raise InputError(
                f"study {name!r} already exists with another protocol: "
                f"{'; '.join(differences)}. "
                "Fix: use the stored values, or a new name with --set study.name=NEW."
            )
    _warn_of_kept_worker_settings(name, stored, spec)
    return study, existing is None


def _warn_of_kept_worker_settings(name: str, stored: StudySpec, given: StudySpec) -> None:
    """Say so when ``[worker]`` values given for an existing study are not used: every worker
    reads them from the study, since workers with different heartbeats or graces would take
    each other's live trials for dead."""
    old, new = dataclasses.asdict(stored.worker), dataclasses.asdict(given.worker)
    changed = [
        f"worker.{key} (stored {old[key]}, given {new[key]})"
        for key in old
        if old[key] != new[key]
    ]
    if changed:
        _logger.warning(
            "study %r keeps the worker settings it was made with: %s; every worker reads "
            "them from the study, so new values need a new study (--set study.name=NEW)",
            name,
            "; ".join(changed),
        )


def spec_from_study(study: optuna.Study, storage_url: str) -> StudySpec:
    """The spec stored in a study by ``create_from_spec``, with ``storage_url`` filled in.

    A key that did not exist when the study was made takes the value that reproduces what the
    study ran then (``trainer._config.KEYS_ADDED_LATER``, ``SPEC_KEYS_ADDED_LATER``).
    """
    raw = study.user_attrs.get(_attrs.SPEC)
    if not isinstance(raw, dict):
        raise InputError(
            f"study {study.study_name!r} holds no lrstudy spec (it was not made by "
            "`lrstudy create`); use a study that lrstudy created, or create one first."
        )
    raw = copy.deepcopy(raw)
    raw["study"]["storage"] = storage_url
    for section, defaults in (*KEYS_ADDED_LATER.items(), *SPEC_KEYS_ADDED_LATER.items()):
        raw[section] = {**defaults, **raw.get(section, {})}
    return spec_from_mapping(raw, source=f"study {study.study_name}")
