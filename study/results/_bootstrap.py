"""Per-trial 95% intervals of the test metrics, by bootstrap over patients.

The test set holds several images of many patients, and images of one patient are not
independent: resampling images would treat them as more evidence than they are and give
intervals that are too narrow. Patients are therefore resampled with replacement, each drawn
patient bringing all of their images, and the interval is the percentile interval.

Metric conventions (``point_metrics``, used for the point estimate and every resample):
PNEUMONIA (1) is predicted when p > 0.5, so a NaN probability counts as NORMAL, as Keras's
accuracy counts it; precision without a PNEUMONIA prediction, recall without a PNEUMONIA label
and specificity without a NORMAL label are 0, and F1 = 2TP / (2TP + FP + FN) is 0 when that
denominator is 0 (scikit-learn's ``zero_division=0``). ROC AUC is the Mann-Whitney rank AUC
(ties 1/2, NaN ranks lowest), so a constant predictor has AUC 0.5; it is NaN when the labels
hold one class, and such resamples are left out of the AUC interval. The Brier score counts a
NaN probability as 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from study.results._calibration import probabilities_as_normal
from study.results._delong import binary_inputs, roc_auc

RESAMPLES = 2000
CONFIDENCE = 0.95
THRESHOLD = 0.5

Metric = Callable[[np.ndarray, np.ndarray], Mapping[str, float]]


@dataclass(frozen=True)
class Interval:
    """A metric's point estimate and bootstrap percentile interval.

    ``resamples`` counts the resamples in which the metric was defined (not NaN); ``low`` and
    ``high`` are ``None`` when it was defined in none. ``point`` is NaN where the metric is
    undefined on the full data (ROC AUC with one class).
    """

    point: float
    low: float | None
    high: float | None
    resamples: int


def point_metrics(
    labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """Accuracy, precision, recall, specificity, F1, ROC AUC and Brier score, by one definition.

    Args:
        labels: 0 = NORMAL, 1 = PNEUMONIA.
        probabilities: Predicted probability of PNEUMONIA per image; NaN counts as NORMAL.
    """
    y, p = binary_inputs(labels, probabilities)
    predicted = p > THRESHOLD
    tp = int((predicted & y).sum())
    fp = int((predicted & ~y).sum())
    fn = int((~predicted & y).sum())
    tn = y.size - tp - fp - fn
    return {
        "accuracy": (tp + tn) / y.size,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": roc_auc(y, p),
        "brier": float(np.mean((probabilities_as_normal(p) - y) ** 2)),
    }


def patient_resamples(
    patient_ids: Sequence[str] | np.ndarray, resamples: int, seed: int
) -> list[np.ndarray]:
    """Image indices of each bootstrap resample: patients drawn with replacement, images kept.

    A patient drawn k times contributes each of their images k times. The draw depends only on
    the seed and the set of patients, not on the order of the images.

    Args:
        patient_ids: The patient of each image.
        resamples: Number of resamples.
        seed: Seed of the numpy Generator.
    """
    patients, patient_of = np.unique(np.asarray(patient_ids), return_inverse=True)
    images_by_patient = np.argsort(patient_of, kind="stable")
    counts = np.bincount(patient_of, minlength=patients.size)
    starts = np.cumsum(counts) - counts
    draws = np.random.default_rng(seed).integers(0, patients.size, size=(resamples, patients.size))
    indices = []
    for drawn in draws:
        lengths = counts[drawn]
        total = int(lengths.sum())
        # Position j of the resample lies in the block of one drawn patient; its offset within
        # that block added to the patient's start picks the image.
        block_starts = np.cumsum(lengths) - lengths
        offsets = np.arange(total) - np.repeat(block_starts, lengths)
        indices.append(images_by_patient[np.repeat(starts[drawn], lengths) + offsets])
    return indices


def bootstrap_intervals(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    patient_ids: Sequence[str] | np.ndarray,
    metric: Metric = point_metrics,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Interval]:
    """Point estimate and patient-bootstrap percentile interval of each metric.

    Args:
        labels: 0 = NORMAL, 1 = PNEUMONIA, one per image.
        probabilities: Predicted probability of PNEUMONIA per image.
        patient_ids: The patient of each image; one patient's images are resampled together.
        metric: Maps (labels, probabilities) to named metric values; NaN means undefined.
            Defaults to ``point_metrics``.
        resamples: Number of bootstrap resamples. Defaults to 2000.
        seed: Seed of the numpy Generator, so that a report is reproducible. Defaults to 0.
        confidence: Coverage of the interval. Defaults to 0.95.
    """
    y, p = binary_inputs(labels, probabilities)
    ids = np.asarray(patient_ids).ravel()
    if ids.shape != y.shape:
        raise ValueError(f"labels {y.shape} and patient ids {ids.shape} differ in shape")
    point = metric(y, p)
    values = {name: np.empty(resamples) for name in point}
    for r, index in enumerate(patient_resamples(ids, resamples, seed)):
        for name, value in metric(y[index], p[index]).items():
            values[name][r] = value
    tail = 100 * (1 - confidence) / 2
    intervals = {}
    for name, sample in values.items():
        defined = sample[~np.isnan(sample)]
        low, high = np.percentile(defined, [tail, 100 - tail]) if defined.size else (None, None)
        intervals[name] = Interval(
            point=float(point[name]),
            low=None if low is None else float(low),
            high=None if high is None else float(high),
            resamples=int(defined.size),
        )
    return intervals


def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, 0 when the denominator is 0 (scikit-learn's zero_division=0)."""
    return numerator / denominator if denominator else 0.0
