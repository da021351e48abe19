"""Point metrics by one definition, and the patient-level bootstrap: coverage, grouping, seed."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics

from study.results._bootstrap import bootstrap_intervals, patient_resamples, point_metrics
from study.results._delong import delong_test

NOMINAL = 0.95


def _accuracy(labels: np.ndarray, probabilities: np.ndarray, _: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(np.mean((probabilities > 0.5) == labels))}


def _clustered(
    rng: np.random.Generator, patients: int, accuracy: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-5 images per patient, all right or all wrong together, right with ``accuracy``."""
    images = rng.integers(1, 6, patients)
    patient = np.repeat(np.arange(patients), images)
    correct = np.repeat(rng.random(patients) < accuracy, images)
    y = rng.integers(0, 2, patient.size)
    p = np.where(correct, 0.2 + 0.6 * y, 0.8 - 0.6 * y)
    return y, p, np.char.add("patient", patient.astype(str))


def test_point_metrics_agree_with_scikit_learn_with_ties_and_nan() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p = np.round(np.clip(0.35 * y + rng.random(500) * 0.65, 0, 1), 2)
    p[[3, 50, 400]] = np.nan
    predicted = np.nan_to_num(p, nan=0.0) > 0.5
    ranked = np.where(np.isnan(p), -1.0, p)
    got = point_metrics(y, p)
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(y, predicted))
    assert got["precision"] == pytest.approx(metrics.precision_score(y, predicted))
    assert got["recall"] == pytest.approx(metrics.recall_score(y, predicted))
    assert got["specificity"] == pytest.approx(metrics.recall_score(y, predicted, pos_label=0))
    assert got["f1"] == pytest.approx(metrics.f1_score(y, predicted))
    assert got["roc_auc"] == pytest.approx(metrics.roc_auc_score(y, ranked))
    assert got["brier"] == pytest.approx(metrics.brier_score_loss(y, np.nan_to_num(p)))
    assert got["roc_auc"] == pytest.approx(delong_test(y, p, p).auc_a, abs=1e-15)


def test_zero_division_constant_predictor_and_one_class_conventions() -> None:
    y = np.array([0, 1, 1, 0, 1])
    none_positive = point_metrics(y, np.full(5, 0.2))
    assert none_positive["precision"] == none_positive["f1"] == none_positive["recall"] == 0.0
    assert none_positive["roc_auc"] == 0.5
    diverged = point_metrics(y, np.full(5, np.nan))
    assert diverged["accuracy"] == pytest.approx(2 / 5) and diverged["roc_auc"] == 0.5
    one_class = point_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert one_class["specificity"] == 0.0 and math.isnan(one_class["roc_auc"])


def test_each_resample_holds_whole_patients() -> None:
    ids = np.array(["a", "b", "a", "c", "b", "a", "d"])
    resamples = patient_resamples(ids, resamples=300, seed=4)
    assert len(resamples) == 300
    images_of = {patient: Counter(np.flatnonzero(ids == patient)) for patient in set(ids)}
    sizes = set()
    for index in resamples:
        drawn = Counter(index.tolist())
        patients = Counter()
        for patient, images in images_of.items():
            copies = {drawn[i] for i in images}
            assert len(copies) == 1, "a patient's images were split"
            patients[patient] = copies.pop()
        assert sum(patients.values()) == 4
        sizes.add(index.size)
    assert len(sizes) > 1  # the number of images varies with the patients drawn


def test_patient_bootstrap_is_wider_than_image_bootstrap_on_clustered_outcomes() -> None:
    y, p, patients = _clustered(np.random.default_rng(8), patients=150, accuracy=0.8)
    by_patient = bootstrap_intervals(y, p, patients, resamples=500, seed=1)["accuracy"]
    per_image = np.arange(y.size).astype(str)
    by_image = bootstrap_intervals(y, p, per_image, resamples=500, seed=1)["accuracy"]
    assert by_patient.point == by_image.point
    # About 3 images per patient, all alike: the honest interval is about sqrt(3) times wider.
    assert (by_patient.high - by_patient.low) > 1.4 * (by_image.high - by_image.low)


def test_interval_covers_the_true_accuracy_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(2024)
    repetitions = 200
    hits = {"patient": 0, "image": 0}
    for repetition in range(repetitions):
        y, p, patients = _clustered(rng, patients=100, accuracy=0.8)
        per_image = np.arange(y.size).astype(str)
        for level, ids in (("patient", patients), ("image", per_image)):
            intervals = bootstrap_intervals(y, p, ids, _accuracy, resamples=200, seed=repetition)
            hits[level] += intervals["accuracy"].low <= 0.8 <= intervals["accuracy"].high
    low, high = stats.binom.ppf([0.001, 0.999], repetitions, NOMINAL)
    assert low <= hits["patient"] <= high
    # Resampling images ignores the clustering: it must visibly under-cover on this data.
    assert hits["image"] < low


def test_same_seed_same_intervals_other_seed_other_intervals() -> None:
    y, p, patients = _clustered(np.random.default_rng(3), patients=80, accuracy=0.85)
    p = np.clip(p + np.random.default_rng(4).normal(0, 0.1, p.size), 0, 1)
    first = bootstrap_intervals(y, p, patients, resamples=300, seed=7)
    again = bootstrap_intervals(y, p, patients, resamples=300, seed=7)
    other = bootstrap_intervals(y, p, patients, resamples=300, seed=8)
    assert first == again
    assert first["roc_auc"] != other["roc_auc"]
    # The draw depends on the set of patients, not on the order of the images (which changes
    # only the order of summation, hence the last bit).
    order = np.random.default_rng(5).permutation(y.size)
    shuffled = bootstrap_intervals(y[order], p[order], patients[order], resamples=300, seed=7)
    for name, interval in first.items():
        expected = (interval.point, interval.low, interval.high)
        got = shuffled[name]
        assert (got.point, got.low, got.high) == pytest.approx(expected, rel=1e-12)


def test_one_class_resamples_are_left_out_of_the_auc_interval_only() -> None:
    # Two patients, one per class: a quarter of resamples draw only NORMAL, a quarter PNEUMONIA.
    y = np.array([0, 0, 1, 1])
    p = np.array([0.2, 0.4, 0.6, 0.9])
    intervals = bootstrap_intervals(y, p, ["n", "n", "p", "p"], resamples=400, seed=0)
    assert intervals["accuracy"].resamples == 400
    assert 150 < intervals["roc_auc"].resamples < 250
    assert intervals["roc_auc"].low == intervals["roc_auc"].high == 1.0
    lone = bootstrap_intervals([1, 1], [0.9, 0.8], ["x", "x"], resamples=10, seed=0)["roc_auc"]
    assert math.isnan(lone.point) and lone.low is None and lone.resamples == 0


def test_the_default_draws_two_thousand_resamples_of_five_hundred_images() -> None:
    # Its cost against scikit-learn's metrics: benchmarks/bootstrap.py (docs/benchmarks.md).
    y, p, patients = _clustered(np.random.default_rng(6), patients=170, accuracy=0.9)
    y, p, patients = y[:500], p[:500], patients[:500]
    intervals = bootstrap_intervals(y, p, patients)
    assert all(i.resamples == 2000 for i in intervals.values())


def test_the_auc_interval_ranks_the_scores_where_probabilities_saturate() -> None:
    """Logits past 36.7 all have probability 1.0 in float64; the bootstrap ranks the logits."""
    rng = np.random.default_rng(6)
    y = np.repeat([0, 1], 40)
    logits = np.where(y == 1, rng.uniform(38, 60, y.size), rng.uniform(37, 50, y.size))
    p = 1 / (1 + np.exp(-logits))
    assert set(p.tolist()) == {1.0}
    patients = np.arange(y.size).astype(str)
    tied = bootstrap_intervals(y, p, patients, resamples=200, seed=0)["roc_auc"]
    ranked = bootstrap_intervals(y, p, patients, scores=logits, resamples=200, seed=0)["roc_auc"]
    assert tied.point == 0.5
    assert ranked.point == pytest.approx(metrics.roc_auc_score(y, logits)) and ranked.point > 0.7
