"""Each trial's prediction files, read from the study's artifact store or the recorded path.

Results travel with the study: a copy of the database and of the artifacts folder, moved or on
another machine, still finds every trial's files in the artifact store, where the absolute
paths the workers recorded no longer exist. So the store comes first and the path second.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from study.grid import existing_artifact_store, study_uid
from trainer._train import PREDICTIONS_FILE, VAL_PREDICTIONS_FILE

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts.protocol import ArtifactStore


@dataclass(frozen=True, eq=False)
class Predictions:
    """One part's predictions of one trial, in file order; a NaN probability is kept as NaN.

    ``scores`` rank the images (ROC AUC, DeLong, the ROC curve): the logits where the file has
    them, which keep their order where float64 rounds probabilities to 0 or 1; else (files of
    trainers before the logit column) the probabilities.
    """

    paths: tuple[str, ...]
    labels: np.ndarray  # int64, 0 = NORMAL, 1 = PNEUMONIA
    probabilities: np.ndarray  # float64
    scores: np.ndarray  # float64

    def on(self, paths: Sequence[str]) -> Predictions | None:
        """These predictions in the order of ``paths``; None unless both hold the same images."""
        if tuple(paths) == self.paths:
            return self
        where = {path: i for i, path in enumerate(self.paths)}
        if len(where) != len(self.paths) or len(paths) != len(where) or set(paths) != set(where):
            return None
        order = np.array([where[path] for path in paths], dtype=np.int64)
        return Predictions(
            tuple(paths), self.labels[order], self.probabilities[order], self.scores[order]
        )


@dataclass(frozen=True, eq=False)
class TrialPredictions:
    """A trial's test predictions and, where the trainer wrote them, its validation ones."""

    test: Predictions | None
    val: Predictions | None


def load_predictions(
    study: optuna.Study, records: Sequence[dict[str, Any]], artifacts: str | None = None
) -> tuple[dict[int, TrialPredictions], list[str]]:
    """The predictions of each trial record (as ``collect`` makes them), and notes on gaps.

    A trial without readable test predictions is left out with a note saying why; a missing
    validation file is not noted per trial (the export notes it once).

    Args:
        study: The grid study the records come from.
        records: Trial records with ``trial``, ``cell`` and ``predictions_path``.
        artifacts: This machine's artifacts folder, if not the stored spec's. Defaults to `None`.
    """
    from optuna.artifacts import get_all_artifact_meta

    uid = study_uid(study)
    store = existing_artifact_store(study.study_name, study.user_attrs, uid, artifacts)
    notes = []
    if store is None:
        notes.append(
            f"no artifact store of study {study.study_name!r} found"
            + (f" under {artifacts}" if artifacts else "; pass --artifacts DIR if it moved")
            + ": predictions are read from the paths the workers recorded"
        )
    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    loaded = {}
    for record in records:
        where = f"trial {record['trial']} ({record['cell']})"
        files = {}
        if store is not None:
            metas = get_all_artifact_meta(trials[record["trial"]], storage=study._storage)
            files = {meta.filename: meta.artifact_id for meta in metas}
        recorded = record.get("predictions_path")
        test, problem = _read(store, files.get(PREDICTIONS_FILE), recorded)
        if problem is not None:
            notes.append(f"{where}: {problem}; left out of the figures and per-trial statistics")
        val_path = str(Path(recorded).with_name(VAL_PREDICTIONS_FILE)) if recorded else None
        val, _ = _read(store, files.get(VAL_PREDICTIONS_FILE), val_path)
        loaded[record["trial"]] = TrialPredictions(test=test, val=val)
    return loaded, notes


def _read(
    store: ArtifactStore | None, artifact_id: str | None, path: str | None
) -> tuple[Predictions | None, str | None]:
    """The file from the store, else from ``path``; or None and what went wrong."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    text = None
    if store is not None and artifact_id is not None:
        try:
            with store.open_reader(artifact_id) as reader:
                text = reader.read().decode("utf-8")
        except (ArtifactNotFound, OSError):
            text = None
    if text is None:
        if not path:
            return None, "no predictions file recorded or in the artifact store"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError:
            return None, f"predictions file {path} not found, nor in the artifact store"
    name = path or artifact_id
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
        probabilities = np.array([float(row["probability"]) for row in rows], dtype=np.float64)
        has_logits = bool(rows) and "logit" in rows[0]
        predictions = Predictions(
            paths=tuple(row["path"] for row in rows),
            labels=np.array([int(row["label"]) for row in rows], dtype=np.int64),
            probabilities=probabilities,
            scores=(
                np.array([float(row["logit"]) for row in rows], dtype=np.float64)
                if has_logits
                else probabilities
            ),
        )
    except (KeyError, ValueError, TypeError) as error:
        return None, f"predictions file {name} is not path,label,probability ({error})"
    if not rows:
        return None, f"predictions file {name} holds no images"
    if not np.isin(predictions.labels, (0, 1)).all():
        return None, f"predictions file {name} has labels other than 0 and 1"
    probabilities = predictions.probabilities[~np.isnan(predictions.probabilities)]
    if ((probabilities < 0) | (probabilities > 1)).any():
        return None, f"predictions file {name} has probabilities outside [0, 1]"
    return predictions, None
