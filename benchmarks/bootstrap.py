"""Export cost of the patient bootstrap: our ``bootstrap_intervals`` against scikit-learn.

``lrstudy export`` draws 2,000 patient resamples of every trial's test predictions (500 images
in the paper's split) and computes seven metrics on each: 12 trials make 24,000 metric rows.
The baseline computes the same resamples with scikit-learn's metric functions, the obvious way
to write it. Both see the same indices; the benchmark checks that they agree, then prints the
seconds per trial and the ratio.

    .venv/bin/python benchmarks/bootstrap.py [--images 500] [--patients 170] [--resamples 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn import metrics

from study.results._bootstrap import CONFIDENCE, bootstrap_intervals, patient_resamples


def _predictions(images: int, patients: int, seed: int = 6) -> tuple[np.ndarray, ...]:
    """Labels, probabilities and patient ids, a few images per patient, 90% right."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, patients, images)
    y = (ids % 3 != 0).astype(int)  # a patient's images share their label
    right = rng.random(images) < 0.9
    p = np.clip(np.where(right == (y == 1), 0.75, 0.25) + rng.normal(0, 0.15, images), 0, 1)
    return y, p, ids.astype(str)


def _sklearn(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    predicted = (p >= 0.5).astype(int)
    tn, fp, _, _ = metrics.confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    return {
        "accuracy": metrics.accuracy_score(y, predicted),
        "precision": metrics.precision_score(y, predicted, zero_division=np.nan),
        "recall": metrics.recall_score(y, predicted, zero_division=np.nan),
        "specificity": tn / (tn + fp) if tn + fp else np.nan,
        "f1": metrics.f1_score(y, predicted, zero_division=np.nan),
        "roc_auc": metrics.roc_auc_score(y, p) if both else np.nan,
        "brier": metrics.brier_score_loss(y, p),
    }


def _baseline(y: np.ndarray, p: np.ndarray, ids: np.ndarray, resamples: int) -> np.ndarray:
    rows = [_sklearn(y[i], p[i]) for i in patient_resamples(ids, resamples, 0)]
    return np.array([list(row.values()) for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--patients", type=int, default=170)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    y, p, ids = _predictions(args.images, args.patients)

    start = time.perf_counter()
    ours = bootstrap_intervals(y, p, ids, resamples=args.resamples, seed=0)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    rows = _baseline(y, p, ids, args.resamples)
    baseline_s = time.perf_counter() - start

    tail = 100 * (1 - CONFIDENCE) / 2
    for column, (name, interval) in enumerate(ours.items()):
        sample = rows[:, column][~np.isnan(rows[:, column])]
        low, high = np.percentile(sample, [tail, 100 - tail])
        assert np.isclose([interval.low, interval.high], [low, high]).all(), name
    print(
        f"{args.resamples} patient resamples of {args.images} images ({args.patients} patients), "
        "seven metrics each; the intervals agree"
    )
    print(f"bootstrap_intervals: {ours_s:.2f} s per trial, {12 * ours_s:.1f} s for 12 trials")
    print(f"scikit-learn metrics: {baseline_s:.2f} s per trial, {12 * baseline_s:.1f} s for 12")
    print(f"ratio (ours / scikit-learn): {ours_s / baseline_s:.2f}")


if __name__ == "__main__":
    main()
