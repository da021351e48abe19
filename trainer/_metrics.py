"""A cell's metrics and loss, each by one definition, with PNEUMONIA (1) as the positive class.

The conventions make every complete seed count, a diverged or collapsed one included, so that no
seed drops out of a mean and flatters it. PNEUMONIA is predicted when p > 0.5, so a NaN
probability (a diverged network) counts as NORMAL, as Keras's accuracy counts it; precision
without a PNEUMONIA prediction, recall without a PNEUMONIA label and specificity without a
NORMAL label are 0, and F1 = 2TP / (2TP + FP + FN) is 0 when that is 0/0 (scikit-learn's
``zero_division=0``). ROC AUC is the Mann-Whitney rank AUC (ties 1/2, NaN ranks lowest), so a
constant predictor, an all-NaN one included, has AUC 0.5; it is undefined (NaN) only when the
labels hold one class. The Brier score counts a NaN probability as 0. The results' patient
bootstrap computes its point estimates and resamples with ``point_metrics`` too.

The loss of training and validation is one function: binary cross-entropy of the head's logit,
``max(z, 0) - z y + log(1 + exp(-|z|))``, which never overflows and is not clipped
(``logit_loss``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Keras's binary accuracy counts p > 0.5 as positive; validation and test use the same rule.
THRESHOLD = 0.5
# The scores of BinaryMetrics, in the order reports list them (brier and the counts are not).
TEST_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")


@dataclass(frozen=True)
class BinaryMetrics:
    """Test metrics at threshold 0.5, positive class PNEUMONIA (label 1), by the module's rules.

    ``collapsed`` says the network predicted one class for every image (a diverged one predicts
    NORMAL throughout): its accuracy is that class's share, whatever it learnt. A metric that is
    undefined for these labels is ``None`` and ``undefined`` maps its name to the reason: ROC AUC
    when the labels hold one class, everything for no images.
    """

    accuracy: float | None
    precision: float | None
    recall: float | None
    specificity: float | None
    f1: float | None
    roc_auc: float | None
    brier: float | None
    tn: int
    fp: int
    fn: int
    tp: int
    collapsed: bool
    undefined: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "specificity": self.specificity,
            "f1": self.f1,
            "roc_auc": self.roc_auc,
            "brier": self.brier,
            "tn": self.tn,
            "fp": self.fp,
            "fn": self.fn,
            "tp": self.tp,
            "collapsed": self.collapsed,
            "undefined": dict(self.undefined),
        }


def point_metrics(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    scores: Sequence[float] | np.ndarray | None = None,
) -> dict[str, float]:
    """Accuracy, precision, recall, specificity, F1, ROC AUC and Brier score; NaN = undefined.

    Quick enough to run on thousands of bootstrap resamples.

    Args:
        labels: 0 = NORMAL, 1 = PNEUMONIA.
        probabilities: Predicted probability of PNEUMONIA per image; NaN counts as NORMAL.
        scores: What ROC AUC ranks: the logits, whose order survives where float64 rounds a
            probability to 0 or 1. Defaults to the probabilities.
    """
    y, p = _inputs(labels, probabilities)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]; a logit is not a probability")
    if y.size == 0:
        return dict.fromkeys((*TEST_METRICS, "brier"), math.nan)
    tn, fp, fn, tp = _confusion(y, p)
    return {
        "accuracy": (tp + tn) / y.size,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": roc_auc(y, p if scores is None else scores),
        "brier": float(np.mean((np.where(np.isnan(p), 0.0, p) - y) ** 2)),
    }


def binary_metrics(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    scores: Sequence[float] | np.ndarray | None = None,
) -> BinaryMetrics:
    """``point_metrics`` with the confusion matrix, ``collapsed`` and the undefined ones named.

    Args:
        labels: True classes, 0 = NORMAL, 1 = PNEUMONIA.
        probabilities: Predicted probability of PNEUMONIA per image; NaN is allowed.
        scores: What ROC AUC ranks (``point_metrics``). Defaults to the probabilities.
    """
    y, p = _inputs(labels, probabilities)
    values = point_metrics(y, p, scores)
    tn, fp, fn, tp = _confusion(y, p)
    if y.size == 0:
        reasons = dict.fromkeys(values, "no images")
    elif math.isnan(values["roc_auc"]):
        reasons = {"roc_auc": "the labels hold only one class"}
    else:
        reasons = {}
    defined = {name: None if name in reasons else float(value) for name, value in values.items()}
    return BinaryMetrics(
        accuracy=defined["accuracy"],
        precision=defined["precision"],
        recall=defined["recall"],
        specificity=defined["specificity"],
        f1=defined["f1"],
        roc_auc=defined["roc_auc"],
        brier=defined["brier"],
        tn=tn,
        fp=fp,
        fn=fn,
        tp=tp,
        collapsed=y.size > 0 and (tp + fp == 0 or tn + fn == 0),
        undefined=reasons,
    )


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank formula (ties count 1/2); NaN for one class only.

    Args:
        labels: 0 = NORMAL, 1 = PNEUMONIA.
        scores: Higher means more likely PNEUMONIA; NaN ranks lowest, tied with other NaNs.
    """
    from scipy import stats

    y, s = _inputs(labels, scores)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = stats.rankdata(rank_keys(s))
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def rank_keys(scores: np.ndarray) -> np.ndarray:
    """Stand-ins for ``scores`` in the same order and ties, with NaN strictly lowest.

    Dense ranks of the present scores, NaN as 0: -inf cannot stand for NaN, since a logit can
    be -inf itself (a network certain of NORMAL), which must rank above a diverged NaN.
    """
    from scipy import stats

    keys = np.zeros(np.shape(scores))
    present = ~np.isnan(scores)
    keys[present] = stats.rankdata(scores[present], method="dense")
    return keys


def sigmoid(logits: Sequence[float] | np.ndarray) -> np.ndarray:
    """Probabilities of PNEUMONIA from the head's logits, in float64 (NaN stays NaN)."""
    from scipy import special

    return special.expit(np.asarray(logits, dtype=np.float64))


def logit_loss(labels: Sequence[int] | np.ndarray, logits: Sequence[float] | np.ndarray) -> float:
    """Mean binary cross-entropy of logits, the function Keras trains with
    (``BinaryCrossentropy(from_logits=True)``), in float64; NaN when a logit is NaN.

    Written as softplus(-z) for a PNEUMONIA label and softplus(z) for a NORMAL one, so that an
    infinite logit costs 0 on its own side and infinity on the other, not ``inf - inf``.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    if y.size == 0:
        return math.nan
    signed = np.where(y == 1, -z, z)
    return float(np.mean(np.maximum(signed, 0.0) + np.log1p(np.exp(-np.abs(signed)))))


def validation_metrics(
    labels: Sequence[int] | np.ndarray, logits: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """``val_loss`` (``logit_loss``) and ``val_accuracy`` (as in ``point_metrics``: NaN counts
    as NORMAL) of the validation logits, computed over the whole part so that the evaluation
    batch size cannot change them."""
    y = np.asarray(labels).ravel()
    if y.size == 0:
        return {"val_loss": math.nan, "val_accuracy": math.nan}
    return {
        "val_loss": logit_loss(y, logits),
        "val_accuracy": point_metrics(y, sigmoid(logits))["accuracy"],
    }


def _inputs(
    labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Labels as booleans and scores as float64, checked so that mistakes raise early."""
    y = np.asarray(labels).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in shape")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (NORMAL) or 1 (PNEUMONIA)")
    return y.astype(bool), p


def _confusion(y: np.ndarray, p: np.ndarray) -> tuple[int, int, int, int]:
    """TN, FP, FN, TP at p > THRESHOLD (NaN compares false: NORMAL)."""
    predicted = p > THRESHOLD
    tp = int((predicted & y).sum())
    fp = int((predicted & ~y).sum())
    fn = int((~predicted & y).sum())
    return y.size - tp - fp - fn, fp, fn, tp


def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, 0 when the denominator is 0 (scikit-learn's zero_division=0)."""
    return numerator / denominator if denominator else 0.0
