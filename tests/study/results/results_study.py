"""Finished (or half-finished) studies for the export and dashboard tests, without training.

``build_study`` creates the paper's 4 x 3 grid from the preset spec (``create_from_spec``, which
goes through ``create_grid_study``) and runs it with ``run_worker`` and ``FakeCell``: an
objective that records a result through the same ``record_*`` functions as ``CellObjective``
(per-epoch history, final, best and test metrics from ``binary_metrics``, test and validation
predictions CSVs, history and result files) from seeded random numbers instead of a network.
The images are named as the dataset names them, several per patient (``IMAGES``), so that the
patient bootstrap has patients to draw. lr 0.1 seed 1 diverges, as lr 0.1 does in the paper,
and lr 0.1 seed 2 collapses (predicts PNEUMONIA for every image).
"""

from __future__ import annotations

import csv
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna

from storage import open_storage
from study.grid import (
    _attrs,
    artifact_store,
    create_from_spec,
    run_worker,
    study_folder,
    study_uid,
    upload_cell_files,
)
from study.spec import cell_key, load_preset
from trainer._metrics import binary_metrics

LEARNING_RATES = [0.1, 0.01, 0.001, 0.0001]
SEEDS = [0, 1, 2]
EPOCHS = 4
STUDY = "results"
DIVERGED_CELL = "learning_rate=0.1__seed=1"
COLLAPSED_CELL = "learning_rate=0.1__seed=2"
# Mean validation accuracy each rate drifts towards; 0.001 and 0.0001 are close on purpose.
_QUALITY = {0.1: 0.74, 0.01: 0.84, 0.001: 0.93, 0.0001: 0.92}


@dataclass(frozen=True)
class Image:
    """A fake image as the trainer's predictions name it, with its patient under both keys."""

    path: str
    label: int
    patient: str  # data.patient_key "person-type": person7_bacteria and person7_virus differ
    person: str  # data.patient_key "person": both are person7


def _images(part: str, normal: int, pneumonia: int, first: int) -> tuple[Image, ...]:
    """NORMAL images two per patient (every fifth patient of NORMAL2), PNEUMONIA images three
    per person number, two bacterial and one viral, numbered from ``first``."""
    images = []
    for i in range(normal):
        patient = f"{'NORMAL2-' if i // 2 % 5 == 4 else ''}IM-{first + i // 2:04d}"
        name = f"{patient}-{i % 2 + 1:04d}" + ("-0001" if patient.startswith("NORMAL2") else "")
        images.append(Image(f"{part}/NORMAL/{name}.jpeg", 0, patient, patient))
    for i in range(pneumonia):
        person = f"person{first + i // 3}"
        kind = "virus" if i % 3 == 2 else "bacteria"
        name = f"{person}_{kind}_{first * 10 + i}"
        images.append(Image(f"{part}/PNEUMONIA/{name}.jpeg", 1, f"{person}_{kind}", person))
    return tuple(images)


IMAGES = {"test": _images("test", 20, 30, 100), "val": _images("val", 16, 16, 500)}
_LABELS = np.array([image.label for image in IMAGES["test"]])
_VAL_LABELS = np.array([image.label for image in IMAGES["val"]])


@dataclass
class FakeCell:
    """A stand-in for ``CellObjective`` that takes milliseconds per cell."""

    artifacts: Path
    failing_calls: tuple[int, ...] = ()  # These calls (1 = the first) raise.
    val_predictions: bool = True  # Write val_predictions.csv, as the trainer does.
    stop_after: int | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    calls: int = 0

    def __call__(self, trial: optuna.Trial) -> float:
        lr = trial.suggest_categorical("learning_rate", LEARNING_RATES)
        seed = trial.suggest_categorical("seed", SEEDS)
        key = cell_key({"learning_rate": lr, "seed": seed})
        self.calls += 1
        if self.stop_after is not None and self.calls >= self.stop_after:
            self.stop.set()  # This trial still finishes; the worker then returns.
        if self.calls in self.failing_calls:
            raise RuntimeError("ResourceExhaustedError: out of GPU memory")
        folder = study_folder(self.artifacts, STUDY, study_uid(trial.study))
        out = folder / key
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([LEARNING_RATES.index(lr), seed])
        diverged = key == DIVERGED_CELL
        rows = []
        for epoch in range(1, EPOCHS + 1):
            broken = diverged and epoch >= 3
            accuracy = _QUALITY[lr] - 0.08 / epoch + rng.normal(0, 0.015)
            row = {
                "epoch": epoch,
                "loss": None if broken else float(0.5 / epoch + rng.uniform(0, 0.05)),
                "accuracy": 0.0 if broken else float(accuracy + 0.01),
                "val_loss": None if broken else float(1.2 - accuracy + rng.uniform(0, 0.05)),
                "val_accuracy": 0.0 if broken else float(accuracy),
                "seconds": float(rng.uniform(1, 2)),
            }
            rows.append(row)
            trial.report(row["val_accuracy"], step=epoch)
        history = {name: [row[name] for row in rows] for name in rows[0]}
        best_row = max(rows, key=lambda r: (r["val_accuracy"], -(r["val_loss"] or 1e9)))
        final = {k: rows[-1][k] for k in ("epoch", "val_loss", "val_accuracy")}
        best = {k: best_row[k] for k in ("epoch", "val_loss", "val_accuracy")}
        probabilities = _probabilities(key, lr, _LABELS, rng)
        test = {**binary_metrics(_LABELS, probabilities).to_dict(), "weights": "last"}
        predictions = out / "predictions.csv"
        _write_predictions(predictions, IMAGES["test"], probabilities)
        if self.val_predictions:
            _write_predictions(
                out / "val_predictions.csv",
                IMAGES["val"],
                _probabilities(key, lr, _VAL_LABELS, rng),
            )
        with open(out / "history.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        record = {"final": final, "best": best, "test": test, "diverged": diverged}
        (out / "result.json").write_text(json.dumps(record))
        result = {  # as trainer.CellResult.to_dict() gives it
            "history": rows,
            "final": final,
            "best": best,
            "test": test,
            "diverged": diverged,
            "diverged_epoch": 3 if diverged else None,
            "epochs_run": EPOCHS,
            "predictions_path": str(predictions),
            "checkpoint_path": str(out / "checkpoint.keras"),
            "environment": {"device": "cpu", "backend": "tensorflow"},
            "seconds": float(sum(history["seconds"])),
        }
        _attrs.record_cell(trial, key, EPOCHS, str(out))
        _attrs.record_result(trial, result, reduce="last")
        upload_cell_files(trial, artifact_store(folder), out)
        return final["val_accuracy"]


def _probabilities(
    key: str, lr: float, labels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    if key == DIVERGED_CELL:
        return np.full(len(labels), np.nan)
    if key == COLLAPSED_CELL:
        return rng.uniform(0.9, 0.99, len(labels))
    margin = (_QUALITY[lr] - 0.5) * 6 * (2 * labels - 1)
    return 1 / (1 + np.exp(-(margin + rng.normal(0, 1.5, len(labels)))))


def _write_predictions(path: Path, images: tuple[Image, ...], probabilities: np.ndarray) -> None:
    """``path,label,probability`` per image, as trainers before the logit column wrote their
    predictions.csv: the export reads those too (the real objective's test reads the new)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", "probability"])
        for image, p in zip(images, probabilities, strict=True):
            writer.writerow([image.path, image.label, repr(float(p))])


def build_study(
    url: str,
    artifacts: Path,
    *,
    failing_calls: tuple[int, ...] = (),
    stop_after: int | None = None,
    reduce: str = "last",
    val_predictions: bool = True,
) -> optuna.Study:
    """The paper grid as study ``results`` in ``url``, run by one in-process worker."""
    spec = load_preset(
        "paper",
        [
            f"study.name={json.dumps(STUDY)}",
            f"study.artifacts={json.dumps(str(artifacts))}",
            f"study.reduce={json.dumps(reduce)}",
            f"train.epochs={EPOCHS}",
            "worker.max_retries=0",
        ],
    )
    storage = open_storage(url)
    study, _ = create_from_spec(storage, spec)
    objective = FakeCell(
        artifacts,
        failing_calls=failing_calls,
        stop_after=stop_after,
        val_predictions=val_predictions,
    )
    run_worker(study, objective, worker_id="w0", poll_s=0.05, stop=objective.stop)
    return optuna.load_study(study_name=STUDY, storage=url)
