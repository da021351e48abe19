"""A cell's classification metrics, by scikit-learn, with PNEUMONIA as the positive class."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Keras's binary accuracy counts p > 0.5 as positive; validation and test use the same rule.
THRESHOLD = 0.5
# Keras clips probabilities to [eps, 1 - eps] in binary cross-entropy; keras.config.epsilon().
_EPSILON = 1e-7
# The scores of BinaryMetrics, in the order reports list them (the confusion counts are not).
TEST_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")


@dataclass(frozen=True)
class BinaryMetrics:
    """Test metrics at threshold 0.5, positive class PNEUMONIA (label 1).

    A metric that is undefined for these predictions is ``None`` and ``undefined`` maps its name
    to the reason. A NaN probability (a diverged network) is a wrong prediction whatever the true
    class: it counts as a false negative for a PNEUMONIA image and a false positive for a NORMAL
    one, so the confusion matrix still covers every image and accuracy cannot be flattered by NaN
    comparing false; ROC AUC is undefined when any probability is NaN.
    """

    accuracy: float | None
    precision: float | None
    recall: float | None
    specificity: float | None
    f1: float | None
    roc_auc: float | None
    tn: int
    fp: int
    fn: int
    tp: int
    undefined: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "specificity": self.specificity,
            "f1": self.f1,
            "roc_auc": self.roc_auc,
            "tn": self.tn,
            "fp": self.fp,
            "fn": self.fn,
            "tp": self.tp,
            "undefined": dict(self.undefined),
        }


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray) -> BinaryMetrics:
    """Accuracy, precision, recall (sensitivity), specificity, F1, ROC AUC, confusion matrix.

    Args:
        labels: True classes, 0 = NORMAL, 1 = PNEUMONIA.
        probabilities: Predicted probability of PNEUMONIA per image; NaN is allowed.
    """
    from sklearn import metrics

    y_true = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if y_true.shape != p.shape:
        raise ValueError(f"labels {y_true.shape} and probabilities {p.shape} differ in shape")
    nan = np.isnan(p)
    y_pred = np.where(nan, 1 - y_true, p > THRESHOLD).astype(np.int64)
    tn, fp, fn, tp = (
        int(v) for v in metrics.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    )
    undefined: dict[str, str] = {}

    def score(name: str, value: float, reason: str) -> float | None:
        if math.isnan(value):
            undefined[name] = reason
            return None
        return float(value)

    undefined_ratio = {"zero_division": np.nan}
    accuracy = score(
        "accuracy",
        metrics.accuracy_score(y_true, y_pred) if len(y_true) else math.nan,
        "no images",
    )
    precision = score(
        "precision",
        metrics.precision_score(y_true, y_pred, pos_label=1, **undefined_ratio),
        "no image was predicted PNEUMONIA (TP + FP = 0)",
    )
    recall = score(
        "recall",
        metrics.recall_score(y_true, y_pred, pos_label=1, **undefined_ratio),
        "no PNEUMONIA image among the labels (TP + FN = 0)",
    )
    specificity = score(
        "specificity",
        metrics.recall_score(y_true, y_pred, pos_label=0, **undefined_ratio),
        "no NORMAL image among the labels (TN + FP = 0)",
    )
    f1 = score(
        "f1",
        metrics.f1_score(y_true, y_pred, pos_label=1, **undefined_ratio),
        "no PNEUMONIA image among labels or predictions (2TP + FP + FN = 0)",
    )
    roc_auc = score("roc_auc", *_roc_auc(y_true, p, nan))
    return BinaryMetrics(
        accuracy=accuracy,
        precision=precision,
        recall=recall,
        specificity=specificity,
        f1=f1,
        roc_auc=roc_auc,
        tn=tn,
        fp=fp,
        fn=fn,
        tp=tp,
        undefined=undefined,
    )


def _roc_auc(y_true: np.ndarray, p: np.ndarray, nan: np.ndarray) -> tuple[float, str]:
    """ROC AUC, or NaN and why it says nothing about the ranking."""
    from sklearn import metrics

    if nan.any():
        return math.nan, f"{int(nan.sum())} of {len(p)} probabilities are NaN (diverged)"
    if len(np.unique(y_true)) < 2:
        return math.nan, "the labels hold only one class"
    if len(np.unique(p)) < 2:
        return math.nan, "all probabilities are equal (constant predictions)"
    return float(metrics.roc_auc_score(y_true, p)), ""


def validation_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """``val_loss`` and ``val_accuracy`` as Keras defines them, but independent of batching.

    The loss is the mean binary cross-entropy in float64 over clipped probabilities, so the
    evaluation batch size cannot change it; NaN probabilities give a NaN loss and, by the rule of
    ``BinaryMetrics``, count as wrong in the accuracy.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if len(y) == 0:
        return {"val_loss": math.nan, "val_accuracy": math.nan}
    clipped = np.clip(p, _EPSILON, 1.0 - _EPSILON)
    loss = -np.mean(y * np.log(clipped) + (1.0 - y) * np.log(1.0 - clipped))
    correct = ~np.isnan(p) & ((p > THRESHOLD) == (y == 1))
    return {"val_loss": float(loss), "val_accuracy": float(np.mean(correct))}
