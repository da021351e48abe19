"""What a reviewer asks of each network and each pair of networks, from the prediction files.

Per trial: 95% intervals of every test metric by bootstrap over patients, the Brier score, and
(where validation predictions exist) sensitivity and specificity at the threshold Youden's J
chooses on validation. Per seed: DeLong's test of two rates' AUCs and McNemar's exact test of
their right and wrong answers, on the test images both networks saw, Holm-corrected over the
pairs of that seed. The seed-level tests (paired t over seeds) live in ``_stats``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from study.results._bootstrap import RESAMPLES, THRESHOLD, bootstrap_intervals
from study.results._calibration import probabilities_as_normal, youden
from study.results._delong import delong_test
from study.results._paired import mcnemar_exact
from study.results._predictions import Predictions, TrialPredictions
from study.results._stats import PairedTest, holm_within
from trainer import TEST_METRICS, patient_id

DELONG = "DeLong"
MCNEMAR = "McNemar"
# Every test metric, and the Brier score, gets a bootstrap interval.
INTERVAL_METRICS = (*TEST_METRICS, "brier")


@dataclass(frozen=True)
class Review:
    """How the export computes the statistics that need the prediction files.

    ``seed`` seeds the patient bootstrap (the same draw for every trial of the study, so that
    an export is reproducible); ``artifacts`` is this machine's artifacts folder when it is not
    the one the study recorded.
    """

    resamples: int = RESAMPLES
    seed: int = 0
    artifacts: str | None = None


def patient_of(spec: Mapping[str, Any] | None) -> Callable[[str], str]:
    """The patient of an image path, read from its file name as the study's split read it.

    The study's stored ``data.patient_key`` picks the naming scheme; a study stored before
    the key existed was split by person number alone (``"person"``). A name no scheme matches
    is its own patient, as the scan treats it.
    """
    data = spec.get("data", {}) if isinstance(spec, Mapping) else {}
    key = data.get("patient_key") or "person"

    def patient(path: str) -> str:
        return patient_id(Path(path).stem, key) or path

    return patient


def trial_statistics(
    test: Predictions,
    val: Predictions | None,
    patient: Callable[[str], str],
    review: Review,
) -> dict[str, Any]:
    """What a trial's test record gains: ``ci95``, ``brier``, ``patients`` and ``youden``.

    ``ci95`` maps each metric to its patient-bootstrap percentile interval ``[low, high]``
    (None where the metric was undefined in every resample); ``youden`` is None without
    validation predictions.

    Args:
        test: The trial's test predictions.
        val: Its validation predictions, where the trainer wrote them.
        patient: The patient of an image path (``patient_of``).
        review: Resamples and seed of the bootstrap.
    """
    patients = [patient(path) for path in test.paths]
    intervals = bootstrap_intervals(
        test.labels,
        test.probabilities,
        patients,
        scores=test.scores,
        resamples=review.resamples,
        seed=review.seed,
    )
    ci95 = {
        name: None if intervals[name].low is None else [intervals[name].low, intervals[name].high]
        for name in INTERVAL_METRICS
    }
    threshold = None
    if val is not None:
        chosen = youden(val.labels, val.probabilities, test.labels, test.probabilities)
        threshold = {
            "threshold": chosen.threshold,
            "validation_j": chosen.validation_j,
            "sensitivity": chosen.sensitivity,
            "specificity": chosen.specificity,
        }
    return {
        "ci95": ci95,
        "brier": intervals["brier"].point,
        "patients": len(set(patients)),
        "youden": threshold,
    }


def per_seed_tests(
    groups: Sequence[tuple[str, Mapping[Any, int]]], predictions: Mapping[int, TrialPredictions]
) -> list[PairedTest]:
    """DeLong and McNemar for every pair of groups on each seed, Holm within seed and test.

    Args:
        groups: Group label and its complete trials by seed, in table order.
        predictions: Each trial's loaded predictions; a trial missing here is untestable.
    """
    seeds = list(dict.fromkeys(seed for _, trials in groups for seed in trials))
    tests = []
    for seed in seeds:
        present = [(label, trials[seed]) for label, trials in groups if seed in trials]
        for i, (a, first) in enumerate(present):
            for b, second in present[i + 1 :]:
                tests += _image_tests(a, b, seed, predictions.get(first), predictions.get(second))
    return holm_within(tests)


def _image_tests(
    a: str, b: str, seed: Any, first: TrialPredictions | None, second: TrialPredictions | None
) -> list[PairedTest]:
    """DeLong (test AUC) and McNemar (test accuracy) of a against b on their shared images."""
    left = first.test if first is not None else None
    right = second.test if second is not None else None
    problem = None
    if left is None or right is None:
        problem = "a trial of the pair has no readable test predictions"
    else:
        right = right.on(left.paths)
        if right is None:
            problem = "the two trials' test images differ, so the test is not paired"
        elif not np.array_equal(left.labels, right.labels):
            problem = "the two trials' predictions files give the same image different labels"
    if problem is not None or left is None or right is None:
        return [
            PairedTest(metric, a, b, seed, test, 0, None, None, None, note=problem)
            for metric, test in (("test_roc_auc", DELONG), ("test_accuracy", MCNEMAR))
        ]
    auc = delong_test(left.labels, left.scores, right.scores)
    correct_a, correct_b = _correct(left), _correct(right)
    answers = mcnemar_exact(correct_a, correct_b)
    images = len(left.paths)
    return [
        PairedTest(
            metric="test_roc_auc",
            a=a,
            b=b,
            seed=seed,
            test=DELONG,
            n=images,
            difference=auc.difference,
            statistic=auc.z,
            p=auc.p,
            details={"auc_a": auc.auc_a, "auc_b": auc.auc_b},
            note=None
            if auc.p is not None
            else "DeLong's variance of the difference is undefined or 0 (e.g. equal rankings)",
        ),
        PairedTest(
            metric="test_accuracy",
            a=a,
            b=b,
            seed=seed,
            test=MCNEMAR,
            n=images,
            difference=float(correct_a.mean() - correct_b.mean()),
            statistic=answers.statistic,
            p=answers.p,
            details={"only_a_right": answers.only_a, "only_b_right": answers.only_b},
        ),
    ]


def _correct(predictions: Predictions) -> np.ndarray:
    """Whether each prediction at the primary threshold is right (NaN predicts NORMAL)."""
    predicted = probabilities_as_normal(predictions.probabilities) > THRESHOLD
    return np.asarray(predicted == predictions.labels.astype(bool))
