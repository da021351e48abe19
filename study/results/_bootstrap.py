"""Per-trial 95% intervals of the test metrics, by bootstrap over patients.

The test set holds several images of many patients, and images of one patient are not
independent: resampling images would treat them as more evidence than they are and give
intervals that are too narrow. Patients are therefore resampled with replacement, each drawn
patient bringing all of their images, and the interval is the percentile interval.

The metrics are the trainer's own (``trainer._metrics.point_metrics``, whose docstring states
the conventions), for the point estimate and every resample: the intervals are of the very
numbers a cell reports. ROC AUC is NaN when a resample's labels hold one class; such resamples
are left out of the AUC interval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from study.results._delong import binary_inputs
from trainer._metrics import THRESHOLD as THRESHOLD  # the reviewer's tables read it here
from trainer._metrics import point_metrics

RESAMPLES = 2000
CONFIDENCE = 0.95

# (labels, probabilities, scores) -> named values, as ``point_metrics``; scores rank ROC AUC.
Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], Mapping[str, float]]


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
    scores: Sequence[float] | np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Interval]:
    """Point estimate and patient-bootstrap percentile interval of each metric.

    Args:
        labels: 0 = NORMAL, 1 = PNEUMONIA, one per image.
        probabilities: Predicted probability of PNEUMONIA per image.
        patient_ids: The patient of each image; one patient's images are resampled together.
        metric: Maps (labels, probabilities, scores) to named metric values; NaN means
            undefined. Defaults to ``point_metrics``.
        scores: What ranks the images, one per image: the logits where known
            (``Predictions.scores``). Defaults to the probabilities.
        resamples: Number of bootstrap resamples. Defaults to 2000.
        seed: Seed of the numpy Generator, so that a report is reproducible. Defaults to 0.
        confidence: Coverage of the interval. Defaults to 0.95.
    """
    y, p, s = binary_inputs(labels, probabilities, probabilities if scores is None else scores)
    ids = np.asarray(patient_ids).ravel()
    if ids.shape != y.shape:
        raise ValueError(f"labels {y.shape} and patient ids {ids.shape} differ in shape")
    point = metric(y, p, s)
    values = {name: np.empty(resamples) for name in point}
    for r, index in enumerate(patient_resamples(ids, resamples, seed)):
        for name, value in metric(y[index], p[index], s[index]).items():
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
