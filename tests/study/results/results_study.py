"""Finished (or half-finished) studies for the export and dashboard tests, without training.

``build_study`` creates the paper's 4 x 3 grid from the preset spec (``create_from_spec``, which
goes through ``create_grid_study``) and runs it with ``run_worker`` and ``FakeCell``: an
objective that records a result through the same ``record_*`` functions as ``CellObjective``
(per-epoch history, final, best and test metrics from ``binary_metrics``, a predictions CSV,
history and result files) from seeded random numbers instead of a network. lr 0.1 seed 1
diverges, as lr 0.1 does in the paper.
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
from study.grid import _attrs, artifact_store, create_from_spec, run_worker, upload_cell_files
from study.spec import cell_key, load_preset
from trainer._metrics import binary_metrics

LEARNING_RATES = [0.1, 0.01, 0.001, 0.0001]
SEEDS = [0, 1, 2]
EPOCHS = 4
STUDY = "results"
DIVERGED_CELL = "learning_rate=0.1__seed=1"
# Mean validation accuracy each rate drifts towards; 0.001 and 0.0001 are close on purpose.
_QUALITY = {0.1: 0.74, 0.01: 0.84, 0.001: 0.93, 0.0001: 0.92}
_LABELS = np.array([0] * 20 + [1] * 30)


@dataclass
class FakeCell:
    """A stand-in for ``CellObjective`` that takes milliseconds per cell."""

    artifacts: Path
    failing_calls: tuple[int, ...] = ()  # These calls (1 = the first) raise.
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
        out = self.artifacts / STUDY / key
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
        if diverged:
            probabilities = np.full(len(_LABELS), np.nan)
        else:
            margin = (_QUALITY[lr] - 0.5) * 6 * (2 * _LABELS - 1)
            probabilities = 1 / (1 + np.exp(-(margin + rng.normal(0, 1.5, len(_LABELS)))))
        test = {**binary_metrics(_LABELS, probabilities).to_dict(), "weights": "last"}
        predictions = out / "predictions.csv"
        with open(predictions, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "probability"])
            for i, (label, p) in enumerate(zip(_LABELS, probabilities, strict=True)):
                writer.writerow([f"test/{label}/img{i}.jpeg", int(label), repr(float(p))])
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
        _attrs.record_result(trial, result, reported=set(range(1, EPOCHS + 1)), reduce="last")
        upload_cell_files(trial, artifact_store(self.artifacts, STUDY), out)
        return final["val_accuracy"]


def build_study(
    url: str,
    artifacts: Path,
    *,
    failing_calls: tuple[int, ...] = (),
    stop_after: int | None = None,
    reduce: str = "last",
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
    objective = FakeCell(artifacts, failing_calls=failing_calls, stop_after=stop_after)
    run_worker(study, objective, worker_id="w0", poll_s=0.05, stop=objective.stop)
    return optuna.load_study(study_name=STUDY, storage=url)
