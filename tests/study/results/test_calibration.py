"""Brier score, reliability bins and the Youden threshold chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_curve

from study.results._calibration import brier_score, reliability_bins, youden


def test_brier_score_matches_scikit_learn_and_counts_nan_as_zero() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = rng.random(300)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    p[:10] = np.nan
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, np.nan_to_num(p, nan=0.0)))
    assert brier_score([0, 1], [0.5, 0.5]) == 0.25


def test_brier_score_rejects_values_that_are_not_probabilities() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier_score([0, 1], [0.2, 1.5])


def test_reliability_bins_by_hand() -> None:
    y = [0, 0, 1, 1, 1, 0]
    p = [0.05, 0.15, 0.12, 0.95, 1.0, np.nan]
    bins = reliability_bins(y, p, bins=4)
    assert [(b.low, b.high) for b in bins] == [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)]
    assert [b.count for b in bins] == [4, 0, 0, 2]
    # NaN counts as 0 and lands in the first bin; 1.0 belongs to the last bin.
    assert bins[0].mean_predicted == pytest.approx((0.05 + 0.15 + 0.12 + 0) / 4)
    assert bins[0].observed_frequency == pytest.approx(1 / 4)
    assert bins[1].mean_predicted is None and bins[1].observed_frequency is None
    assert (bins[3].mean_predicted, bins[3].observed_frequency) == pytest.approx((0.975, 1.0))


def test_calibrated_probabilities_track_the_diagonal() -> None:
    rng = np.random.default_rng(11)
    p = rng.random(50_000)
    y = rng.random(50_000) < p
    bins = reliability_bins(y, p)
    assert len(bins) == 10 and sum(b.count for b in bins) == 50_000
    for b in bins:
        assert b.observed_frequency == pytest.approx(b.mean_predicted, abs=0.02)


def test_youden_threshold_maximises_j_on_validation_like_the_roc_curve() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400)
    p = np.round(1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.2, 400)))), 2)
    fpr, tpr, _ = roc_curve(y, p)
    result = youden(y, p, y, p)
    assert result.validation_j == pytest.approx(np.max(tpr - fpr))
    # Applied to the validation set itself, the threshold reproduces the J it was chosen for.
    assert result.sensitivity + result.specificity - 1 == pytest.approx(result.validation_j)
    assert result.threshold not in set(p)


def test_youden_applies_the_validation_threshold_to_test() -> None:
    result = youden([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8], [0, 0, 1, 1, 1], [0.2, 0.5, 0.4, 0.9, 1])
    assert result.threshold == pytest.approx(0.45)
    assert result.validation_j == 1.0
    assert result.sensitivity == pytest.approx(2 / 3)
    assert result.specificity == pytest.approx(1 / 2)


def test_youden_is_undefined_without_both_classes_or_spread() -> None:
    assert youden([1, 1], [0.2, 0.9], [0, 1], [0.1, 0.9]).threshold is None
    assert youden([0, 1], [0.7, 0.7], [0, 1], [0.1, 0.9]).validation_j is None
    only_positive_test = youden([0, 1], [0.2, 0.9], [1, 1], [0.1, 0.9])
    assert only_positive_test.sensitivity == 0.5 and only_positive_test.specificity is None
