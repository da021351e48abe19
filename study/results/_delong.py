"""DeLong's test of two correlated ROC AUCs, by the fast midrank algorithm of Sun & Xu (2014).

Two networks scored on the same test images give correlated AUCs, so comparing their intervals
overstates the uncertainty of the difference; DeLong's nonparametric covariance accounts for it.
Sun & Xu compute DeLong's structural components from three midrankings per classifier instead
of comparing every positive with every negative, which makes the test O(N log N).

Conventions shared with ``point_metrics``: label 1 (PNEUMONIA) is the positive class and a
higher score means more likely positive. A NaN score ranks below every other score (ties with
the other NaN scores), the way Keras's thresholded metrics count NaN as below every threshold;
an all-NaN predictor is therefore the constant predictor, AUC 0.5. Numbers that are undefined
for the data are ``None``, never an exception: see ``DeLongResult`` and ``AucInterval``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from trainer._metrics import rank_keys

CONFIDENCE = 0.95


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's paired test of AUC(a) - AUC(b), two-sided.

    The AUCs and ``difference`` are ``None`` when the labels hold one class only. ``variance``
    (of the difference) is ``None`` with fewer than two positives or two negatives, where the
    structural components have no sample variance. ``z`` and ``p`` are ``None`` whenever the
    variance is undefined or 0 (e.g. identical scores, or two perfect classifiers).
    """

    auc_a: float | None
    auc_b: float | None
    difference: float | None
    variance: float | None
    z: float | None
    p: float | None


@dataclass(frozen=True)
class AucInterval:
    """One AUC with DeLong's variance and the normal interval, clipped to [0, 1] as in pROC.

    ``auc`` is ``None`` when the labels hold one class; ``variance``, ``low`` and ``high`` are
    ``None`` also with fewer than two positives or two negatives.
    """

    auc: float | None
    variance: float | None
    low: float | None
    high: float | None


def binary_inputs(
    labels: Sequence[int] | np.ndarray, *scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, ...]:
    """Labels as a boolean array and scores as float64, checked so that mistakes raise early.

    Args:
        labels: 0 = NORMAL, 1 = PNEUMONIA (bool, int or float 0/1).
        *scores: One score per image for each classifier; NaN is allowed.
    """
    y = np.asarray(labels).ravel()
    if y.size == 0:
        raise ValueError("no images")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (NORMAL) or 1 (PNEUMONIA)")
    arrays = [np.asarray(s, dtype=np.float64).ravel() for s in scores]
    for s in arrays:
        if s.shape != y.shape:
            raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    return (y.astype(bool), *arrays)


def delong_test(
    labels: Sequence[int] | np.ndarray,
    scores_a: Sequence[float] | np.ndarray,
    scores_b: Sequence[float] | np.ndarray,
) -> DeLongResult:
    """DeLong's test that two classifiers scored on the same images have equal AUC.

    Args:
        labels: 0 = NORMAL, 1 = PNEUMONIA, one per image.
        scores_a: Classifier a's scores on those images (higher = PNEUMONIA).
        scores_b: Classifier b's scores on the same images, in the same order.
    """
    y, a, b = binary_inputs(labels, scores_a, scores_b)
    components = _components(y, np.stack([a, b]))
    if components is None:
        return DeLongResult(None, None, None, None, None, None)
    aucs, v10, v01 = components
    difference = float(aucs[0] - aucs[1])
    # Var(AUC_a - AUC_b) = L S L' with L = (1, -1), written as the variance of the components'
    # differences: identical classifiers then give exactly 0 rather than a rounding residue.
    variance = _variance(v10[0] - v10[1], v01[0] - v01[1])
    if variance is None or variance == 0:
        return DeLongResult(float(aucs[0]), float(aucs[1]), difference, variance, None, None)
    z = difference / math.sqrt(variance)
    p = float(2 * stats.norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), difference, variance, z, p)


def auc_interval(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
) -> AucInterval:
    """One classifier's AUC with DeLong's variance and normal confidence interval.

    Args:
        labels: 0 = NORMAL, 1 = PNEUMONIA.
        scores: Higher means more likely PNEUMONIA; NaN ranks lowest.
        confidence: Coverage of the interval. Defaults to 0.95.
    """
    y, s = binary_inputs(labels, scores)
    components = _components(y, s[np.newaxis])
    if components is None:
        return AucInterval(None, None, None, None)
    aucs, v10, v01 = components
    auc = float(aucs[0])
    variance = _variance(v10[0], v01[0])
    if variance is None:
        return AucInterval(auc, None, None, None)
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * math.sqrt(variance)
    return AucInterval(auc, variance, max(0.0, auc - half), min(1.0, auc + half))


def _components(
    y: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """AUCs and DeLong's structural components V10 (positives) and V01 (negatives).

    Sun & Xu: with T_Z the midranks over all images, T_X over the positives only and T_Y over
    the negatives only, V10 = (T_Z - T_X) / n for the positives (the share of negatives below,
    ties 1/2), V01 = 1 - (T_Z - T_Y) / m for the negatives, and AUC = mean(V10). None when a
    class is absent.

    Args:
        y: Boolean labels, True = positive.
        scores: Shape (classifiers, images).
    """
    m = int(y.sum())
    n = y.size - m
    if m == 0 or n == 0:
        return None
    ranked = rank_keys(scores)
    positives, negatives = ranked[:, y], ranked[:, ~y]
    t_z = stats.rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    t_x = stats.rankdata(positives, axis=1)
    t_y = stats.rankdata(negatives, axis=1)
    v10 = (t_z[:, :m] - t_x) / n
    v01 = 1.0 - (t_z[:, m:] - t_y) / m
    return v10.mean(axis=1), v10, v01


def _variance(v10: np.ndarray, v01: np.ndarray) -> float | None:
    """DeLong's S10 / m + S01 / n; None below two positives or two negatives."""
    if v10.size < 2 or v01.size < 2:
        return None
    return float(np.var(v10, ddof=1) / v10.size + np.var(v01, ddof=1) / v01.size)
