"""Test metrics at threshold 0.5 with PNEUMONIA positive, and the batching-free validation loss."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from trainer import binary_metrics, validation_metrics


def _counts(labels: list[int], probabilities: list[float]) -> tuple[int, int, int, int]:
    """Confusion counts by hand, the rule spelled out: NaN is wrong whatever the class."""
    tn = fp = fn = tp = 0
    for y, p in zip(labels, probabilities, strict=True):
        positive = (1 - y) if math.isnan(p) else int(p > 0.5)
        tp += y == 1 and positive == 1
        fn += y == 1 and positive == 0
        fp += y == 0 and positive == 1
        tn += y == 0 and positive == 0
    return tn, fp, fn, tp


def test_metrics_match_their_definitions_on_random_predictions() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200).tolist()
    probabilities = rng.uniform(0, 1, 200).tolist()
    result = binary_metrics(np.array(labels), np.array(probabilities))
    tn, fp, fn, tp = _counts(labels, probabilities)
    assert (result.tn, result.fp, result.fn, result.tp) == (tn, fp, fn, tp)
    assert result.accuracy == pytest.approx((tp + tn) / 200)
    assert result.precision == pytest.approx(tp / (tp + fp))
    assert result.recall == pytest.approx(tp / (tp + fn))
    assert result.specificity == pytest.approx(tn / (tn + fp))
    assert result.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    pairs = [(p, q) for p, y in zip(probabilities, labels, strict=True) if y for q, z in
             zip(probabilities, labels, strict=True) if not z]  # fmt: skip
    assert result.roc_auc == pytest.approx(sum(p > q for p, q in pairs) / len(pairs))
    assert result.undefined == {}


def test_threshold_is_strictly_above_one_half_as_in_keras() -> None:
    result = binary_metrics(np.array([1, 0]), np.array([0.5, 0.5000001]))
    assert (result.tn, result.fp, result.fn, result.tp) == (0, 1, 1, 0)
    keras_accuracy = keras.metrics.BinaryAccuracy()
    keras_accuracy.update_state(np.array([[1.0], [0.0]]), np.array([[0.5], [0.5000001]]))
    assert float(keras_accuracy.result()) == result.accuracy == 0.0


def test_nan_probabilities_are_wrong_predictions_and_auc_is_undefined() -> None:
    labels, probabilities = [1, 1, 0, 0], [0.9, math.nan, 0.1, math.nan]
    result = binary_metrics(np.array(labels), np.array(probabilities))
    assert (result.tn, result.fp, result.fn, result.tp) == _counts(labels, probabilities)
    assert result.accuracy == 0.5
    assert result.roc_auc is None
    assert "2 of 4 probabilities are NaN" in result.undefined["roc_auc"]


def test_constant_predictions_leave_auc_and_precision_undefined_with_reasons() -> None:
    result = binary_metrics(np.array([0, 1, 1, 0]), np.full(4, 0.2))
    assert result.roc_auc is None and "constant" in result.undefined["roc_auc"]
    assert result.precision is None and "TP + FP = 0" in result.undefined["precision"]
    assert result.recall == 0.0 and result.specificity == 1.0 and result.f1 == 0.0
    assert set(result.to_dict()["undefined"]) == {"roc_auc", "precision"}


def test_one_class_of_labels_leaves_specificity_and_auc_undefined() -> None:
    result = binary_metrics(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]))
    assert result.specificity is None and "NORMAL" in result.undefined["specificity"]
    assert result.roc_auc is None and "one class" in result.undefined["roc_auc"]
    assert result.recall == pytest.approx(2 / 3)


def test_validation_loss_is_keras_binary_cross_entropy_in_float64() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    probabilities = np.concatenate([rng.uniform(0, 1, 48), [0.0, 1.0]]).astype(np.float32)
    ours = validation_metrics(labels, probabilities)
    theirs = keras.losses.BinaryCrossentropy()(
        labels.reshape(-1, 1).astype(np.float32), probabilities.reshape(-1, 1)
    )
    assert ours["val_loss"] == pytest.approx(float(theirs), rel=1e-5)
    assert ours["val_accuracy"] == np.mean((probabilities > 0.5) == (labels == 1))


def test_validation_metrics_do_not_depend_on_order() -> None:
    rng = np.random.default_rng(1)
    labels, probabilities = rng.integers(0, 2, 64), rng.uniform(0, 1, 64)
    order = rng.permutation(64)
    assert validation_metrics(labels, probabilities) == pytest.approx(
        validation_metrics(labels[order], probabilities[order]), rel=1e-12
    )


def test_validation_with_nan_has_nan_loss_and_counts_nan_as_wrong() -> None:
    values = validation_metrics(np.array([1, 0, 1]), np.array([0.9, 0.2, math.nan]))
    assert math.isnan(values["val_loss"])
    assert values["val_accuracy"] == pytest.approx(2 / 3)
