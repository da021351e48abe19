"""Calibration of a network's probabilities, and the Youden threshold chosen on validation.

Accuracy at 0.5 says nothing about whether a probability of 0.9 means 90%; the Brier score and
the reliability diagram do. A threshold tuned on the test set flatters it, so Youden's J is
maximised on the validation set and only then applied to the test set.

A NaN probability (a diverged network) is a certain NORMAL here, as in ``point_metrics``: it is
below every threshold and counts as probability 0 in the Brier score and the diagram.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from study.results._delong import binary_inputs

BINS = 10


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin [low, high) of predicted probability (the last bin includes 1).

    ``mean_predicted`` and ``observed_frequency`` (the share of PNEUMONIA labels) are ``None``
    for an empty bin.
    """

    low: float
    high: float
    count: int
    mean_predicted: float | None
    observed_frequency: float | None


@dataclass(frozen=True)
class Youden:
    """Youden's threshold from validation, and the test sensitivity and specificity at it.

    A probability above ``threshold`` predicts PNEUMONIA. ``threshold`` and
    ``validation_j`` are ``None`` when the validation labels hold one class or the validation
    probabilities are all equal (no threshold separates anything); ``sensitivity`` is ``None``
    then or without PNEUMONIA test images, ``specificity`` likewise without NORMAL ones.
    """

    threshold: float | None
    validation_j: float | None
    sensitivity: float | None
    specificity: float | None


def probabilities_as_normal(probabilities: np.ndarray) -> np.ndarray:
    """The probabilities with NaN as 0, checked to lie in [0, 1].

    Args:
        probabilities: Predicted probability of PNEUMONIA per image; NaN is allowed.
    """
    p = np.where(np.isnan(probabilities), 0.0, probabilities)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    return p


def brier_score(
    labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray
) -> float:
    """Mean squared difference between probability and label (0 is perfect, 0.25 is a coin).

    Args:
        labels: 0 = NORMAL, 1 = PNEUMONIA.
        probabilities: Predicted probability of PNEUMONIA; NaN counts as 0.
    """
    y, p = binary_inputs(labels, probabilities)
    return float(np.mean((probabilities_as_normal(p) - y) ** 2))


def reliability_bins(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    bins: int = BINS,
) -> list[ReliabilityBin]:
    """Equal-width bins of predicted probability with the observed PNEUMONIA frequency in each.

    Args:
        labels: 0 = NORMAL, 1 = PNEUMONIA.
        probabilities: Predicted probability of PNEUMONIA; NaN counts as 0.
        bins: Number of equal-width bins over [0, 1]. Defaults to 10.
    """
    if bins < 1:
        raise ValueError("at least one bin is needed")
    y, p = binary_inputs(labels, probabilities)
    p = probabilities_as_normal(p)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(which, minlength=bins)
    predicted = np.bincount(which, weights=p, minlength=bins)
    observed = np.bincount(which, weights=y.astype(np.float64), minlength=bins)
    return [
        ReliabilityBin(
            low=i / bins,
            high=(i + 1) / bins,
            count=int(counts[i]),
            mean_predicted=float(predicted[i] / counts[i]) if counts[i] else None,
            observed_frequency=float(observed[i] / counts[i]) if counts[i] else None,
        )
        for i in range(bins)
    ]


def youden(
    validation_labels: Sequence[int] | np.ndarray,
    validation_probabilities: Sequence[float] | np.ndarray,
    test_labels: Sequence[int] | np.ndarray,
    test_probabilities: Sequence[float] | np.ndarray,
) -> Youden:
    """Maximise J = sensitivity + specificity - 1 on validation; apply the threshold to test.

    The candidates are the midpoints between consecutive distinct validation probabilities, so
    the threshold does not sit on a validation value; among equal J the lowest wins.

    Args:
        validation_labels: 0 = NORMAL, 1 = PNEUMONIA, on the validation images.
        validation_probabilities: Predicted probability of PNEUMONIA on them; NaN counts as 0.
        test_labels: Labels of the test images.
        test_probabilities: Predicted probabilities on the test images; NaN counts as 0.
    """
    y, p = binary_inputs(validation_labels, validation_probabilities)
    p = probabilities_as_normal(p)
    values = np.unique(p)
    if y.all() or not y.any() or values.size < 2:
        return Youden(None, None, None, None)
    candidates = (values[:-1] + values[1:]) / 2
    # Sensitivity at threshold t is the share of positives above t; searchsorted counts those
    # at or below it in each class's sorted probabilities.
    positives, negatives = np.sort(p[y]), np.sort(p[~y])
    sensitivity = 1.0 - np.searchsorted(positives, candidates, side="right") / positives.size
    specificity = np.searchsorted(negatives, candidates, side="right") / negatives.size
    best = int(np.argmax(sensitivity + specificity - 1.0))
    threshold = float(candidates[best])
    j = float(sensitivity[best] + specificity[best] - 1.0)
    test_y, test_p = binary_inputs(test_labels, test_probabilities)
    predicted = probabilities_as_normal(test_p) > threshold
    return Youden(
        threshold=threshold,
        validation_j=j,
        sensitivity=_share(predicted[test_y]),
        specificity=_share(~predicted[~test_y]),
    )


def _share(hits: np.ndarray) -> float | None:
    """The share of True, None for no elements."""
    return float(hits.mean()) if hits.size else None
