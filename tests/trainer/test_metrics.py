"""The metric conventions (every seed counts), and one loss for training and validation."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from sklearn import metrics

from trainer import binary_metrics, validation_metrics
from trainer._metrics import logit_loss, point_metrics, sigmoid


def _counts(labels: list[int], probabilities: list[float]) -> tuple[int, int, int, int]:
    """Confusion counts by hand, the rule spelled out: NaN compares false, so it is NORMAL."""
    tn = fp = fn = tp = 0
    for y, p in zip(labels, probabilities, strict=True):
        positive = int(p > 0.5)
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
    expected_brier = np.mean((np.array(probabilities) - np.array(labels)) ** 2)
    assert result.brier == pytest.approx(expected_brier)
    assert result.undefined == {} and result.collapsed is False


def test_metrics_agree_with_scikit_learn_zero_division_0_with_ties_and_nan() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p = np.round(np.clip(0.35 * y + rng.random(500) * 0.65, 0, 1), 2)
    p[[3, 50, 400]] = np.nan
    predicted = np.nan_to_num(p, nan=0.0) > 0.5
    result = binary_metrics(y, p)
    assert result.accuracy == pytest.approx(metrics.accuracy_score(y, predicted))
    assert result.precision == pytest.approx(metrics.precision_score(y, predicted))
    assert result.recall == pytest.approx(metrics.recall_score(y, predicted))
    assert result.specificity == pytest.approx(metrics.recall_score(y, predicted, pos_label=0))
    assert result.f1 == pytest.approx(metrics.f1_score(y, predicted))
    assert result.roc_auc == pytest.approx(metrics.roc_auc_score(y, np.nan_to_num(p, nan=-1.0)))
    assert result.brier == pytest.approx(metrics.brier_score_loss(y, np.nan_to_num(p)))
    assert {k: v for k, v in result.to_dict().items() if k in point_metrics(y, p)} == (
        pytest.approx(point_metrics(y, p))
    )


def test_threshold_is_strictly_above_one_half_as_in_keras() -> None:
    result = binary_metrics(np.array([1, 0]), np.array([0.5, 0.5000001]))
    assert (result.tn, result.fp, result.fn, result.tp) == (0, 1, 1, 0)
    keras_accuracy = keras.metrics.BinaryAccuracy()
    keras_accuracy.update_state(np.array([[1.0], [0.0]]), np.array([[0.5], [0.5000001]]))
    assert float(keras_accuracy.result()) == result.accuracy == 0.0


def test_nan_probabilities_count_as_normal_and_rank_lowest() -> None:
    labels, probabilities = [1, 1, 0, 0], [0.9, math.nan, 0.1, math.nan]
    result = binary_metrics(np.array(labels), np.array(probabilities))
    assert (result.tn, result.fp, result.fn, result.tp) == _counts(labels, probabilities) == (
        2, 0, 1, 1
    )  # fmt: skip
    assert result.accuracy == 0.75
    # Pairs (positive, negative): 0.9 beats 0.1 and NaN; the NaN positive ranks below 0.1 and
    # ties the NaN negative.
    assert result.roc_auc == pytest.approx((1 + 1 + 0 + 0.5) / 4)


def test_a_diverged_network_is_a_collapsed_constant_predictor_of_normal() -> None:
    labels = np.array([0, 1, 1, 0, 1])
    result = binary_metrics(labels, np.full(5, math.nan))
    assert (result.tn, result.fp, result.fn, result.tp) == (2, 0, 3, 0)
    assert result.accuracy == pytest.approx(2 / 5) and result.roc_auc == 0.5
    assert result.precision == result.recall == result.f1 == 0.0 and result.specificity == 1.0
    assert result.brier == pytest.approx(3 / 5)  # NaN counts as probability 0
    assert result.collapsed is True and result.undefined == {}


def test_constant_predictions_score_auc_one_half_and_zero_precision() -> None:
    result = binary_metrics(np.array([0, 1, 1, 0]), np.full(4, 0.2))
    assert result.roc_auc == 0.5 and result.precision == 0.0 and result.f1 == 0.0
    assert result.recall == 0.0 and result.specificity == 1.0
    assert result.collapsed is True and result.undefined == {}
    always_pneumonia = binary_metrics(np.array([0, 1, 1, 0]), np.full(4, 0.9))
    assert always_pneumonia.collapsed is True and always_pneumonia.specificity == 0.0


def test_one_class_of_labels_leaves_only_auc_undefined() -> None:
    result = binary_metrics(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]))
    assert result.specificity == 0.0 and result.recall == pytest.approx(2 / 3)
    assert result.roc_auc is None and "one class" in result.undefined["roc_auc"]
    assert set(result.undefined) == {"roc_auc"} and result.collapsed is False


def test_no_images_leave_every_score_undefined() -> None:
    result = binary_metrics(np.array([], dtype=np.uint8), np.array([], dtype=np.float32))
    assert result.accuracy is None and result.roc_auc is None and result.collapsed is False
    assert set(result.undefined) == {*point_metrics([1], [0.5])}


def test_validation_loss_is_the_training_loss_of_keras_from_logits() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    logits = np.concatenate([rng.normal(0, 3, 46), [-30.0, 30.0, 0.0, 1e-3]]).astype(np.float32)
    ours = validation_metrics(labels, logits)
    theirs = keras.losses.BinaryCrossentropy(from_logits=True)(
        labels.reshape(-1, 1).astype(np.float32), logits.reshape(-1, 1)
    )
    assert ours["val_loss"] == pytest.approx(float(theirs), rel=1e-5)
    assert ours["val_accuracy"] == np.mean((logits > 0) == (labels == 1))
    assert ours["val_accuracy"] == point_metrics(labels, sigmoid(logits))["accuracy"]


def test_a_saturated_logit_gives_the_true_loss_not_a_clipped_one() -> None:
    labels = np.array([0, 0, 1, 1])
    logits = np.array([50.0, -50.0, -200.0, 200.0], dtype=np.float32)
    assert logit_loss(labels, logits) == pytest.approx((50 + 200) / 4, rel=1e-12)
    theirs = keras.losses.BinaryCrossentropy(from_logits=True)(
        labels.reshape(-1, 1).astype(np.float32), logits.reshape(-1, 1)
    )
    assert float(theirs) == pytest.approx(62.5, rel=1e-6)  # -log(1e-7) = 16.1 was the old cap


def test_roc_auc_ranks_the_logits_where_probabilities_round_to_1() -> None:
    """float64 rounds the sigmoid of a logit beyond about 36.7 to exactly 1: ranked on the
    probabilities, such images tie; ranked on the logits, they keep their order."""
    labels, logits = np.array([0, 1, 1, 1]), np.array([38.0, 40.0, 45.0, 5.0])
    probabilities = sigmoid(logits)
    assert probabilities[:3].tolist() == [1.0, 1.0, 1.0]
    assert point_metrics(labels, probabilities)["roc_auc"] == pytest.approx(1 / 3)
    ranked = point_metrics(labels, probabilities, logits)
    assert ranked["roc_auc"] == pytest.approx(metrics.roc_auc_score(labels, logits)) == 2 / 3
    thresholded = {k: v for k, v in ranked.items() if k != "roc_auc"}
    assert thresholded == {
        k: v for k, v in point_metrics(labels, probabilities).items() if k != "roc_auc"
    }


def test_a_nan_ranks_below_a_logit_of_minus_infinity() -> None:
    """-inf is a network certain of NORMAL, NaN a diverged one: they must not tie."""
    labels, logits = np.array([0, 1, 0, 1]), np.array([np.nan, -np.inf, np.nan, 3.0])
    assert point_metrics(labels, sigmoid(logits), logits)["roc_auc"] == 1.0
    assert point_metrics([0, 1], [np.nan, np.nan])["roc_auc"] == 0.5  # NaN ties with NaN


def test_an_infinite_logit_on_its_own_side_costs_nothing() -> None:
    """An overflowed logit is a certainty: right costs 0, wrong costs infinity, never NaN."""
    assert logit_loss([1, 0], [np.inf, -np.inf]) == 0.0
    assert logit_loss([0, 1], [np.inf, 1.0]) == np.inf
    assert logit_loss([1, 0], [np.inf, 2.0]) == pytest.approx(logit_loss([0], [2.0]) / 2)
    assert np.isnan(logit_loss([1, 0], [np.nan, 1.0]))


def test_validation_metrics_do_not_depend_on_order() -> None:
    rng = np.random.default_rng(1)
    labels, logits = rng.integers(0, 2, 64), rng.normal(0, 2, 64)
    order = rng.permutation(64)
    assert validation_metrics(labels, logits) == pytest.approx(
        validation_metrics(labels[order], logits[order]), rel=1e-12
    )


def test_validation_with_nan_has_nan_loss_and_counts_nan_as_normal() -> None:
    values = validation_metrics(np.array([1, 0, 1, 0]), np.array([2.0, -1.0, math.nan, math.nan]))
    assert math.isnan(values["val_loss"])
    assert values["val_accuracy"] == pytest.approx(3 / 4)  # the NaN NORMAL image is right


def test_probabilities_outside_zero_one_are_refused() -> None:
    with pytest.raises(ValueError, match="logit"):
        point_metrics([0, 1], [-2.0, 3.0])
