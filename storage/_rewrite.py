"""Rewriting what Optuna's API keeps fixed: attributes of finished trials, in one transaction.

Optuna refuses any change to a finished trial, and each of its writes is a transaction of its
own. A change that must reach every trial of a study at once (and a crash must leave either
all of it or none) goes straight to Optuna's tables here, in a single transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy.orm
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.storages import BaseStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session

from storage._lock import rdb_backend


def rewrite_study(
    storage: BaseStorage,
    study_id: int,
    *,
    study_system_attrs: Mapping[str, Any],
    study_user_attrs: Mapping[str, Any],
    trial_system_attrs: Mapping[int, Mapping[str, Any]],
    distributions: Mapping[str, tuple[BaseDistribution, BaseDistribution]],
) -> None:
    """Set study and trial attributes and replace parameter distributions, all or nothing.

    Finished trials included. Callers that race other writers of the same keys hold the study
    lock (``study_lock``).

    Args:
        storage: An RDB storage (SQLite or PostgreSQL).
        study_id: The study.
        study_system_attrs: Study system attributes to set (added if absent).
        study_user_attrs: Study user attributes to set (added if absent).
        trial_system_attrs: Trial id to the system attributes to set on it (added if absent).
        distributions: Parameter name to (old, new): each of the study's parameters of that
            name recorded with the old distribution gets the new one. The new one must give
            every stored value the same external value (Optuna stores a categorical value as
            its index: new choices may only be appended).

    Raises:
        ValueError: ``storage`` is not an RDB storage, or a new distribution reads a stored
            value differently.
    """
    backend = rdb_backend(storage)
    if backend is None:
        raise ValueError(f"rewriting a study needs an RDB storage, not {type(storage).__name__}")
    with _create_scoped_session(backend.scoped_session) as session:
        _upsert(
            session, models.StudySystemAttributeModel, {"study_id": study_id}, study_system_attrs
        )
        _upsert(session, models.StudyUserAttributeModel, {"study_id": study_id}, study_user_attrs)
        for trial_id, attrs in trial_system_attrs.items():
            _upsert(session, models.TrialSystemAttributeModel, {"trial_id": trial_id}, attrs)
        params = (
            session.query(models.TrialParamModel)
            .join(models.TrialModel)
            .filter(models.TrialModel.study_id == study_id)
            .filter(models.TrialParamModel.param_name.in_(list(distributions)))
        )
        for param in params:
            old, new = distributions[param.param_name]
            if json_to_distribution(param.distribution_json) != old:
                continue
            if new.to_external_repr(param.param_value) != old.to_external_repr(param.param_value):
                raise ValueError(
                    f"the new distribution of {param.param_name!r} reads the stored value "
                    f"{old.to_external_repr(param.param_value)!r} differently"
                )
            param.distribution_json = distribution_to_json(new)


def _upsert(
    session: sqlalchemy.orm.Session,
    model: type[Any],
    owner: Mapping[str, int],
    values: Mapping[str, Any],
) -> None:
    """Set the attributes ``values`` of the study or trial ``owner`` (``{"study_id": 1}``)."""
    rows = {row.key: row for row in session.query(model).filter_by(**owner)}
    for key, value in values.items():
        if key in rows:
            rows[key].value_json = json.dumps(value)
        else:
            session.add(model(**owner, key=key, value_json=json.dumps(value)))
