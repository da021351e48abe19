"""DeLong's paired AUC test against R's pROC, a brute-force DeLong, and the undefined cases."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from study.results._delong import auc_interval, delong_test

# pROC is told which label is the control (0) and that cases (1) score higher, so that it
# never flips a worse-than-chance classifier to AUC > 0.5 on its own.
R_SCRIPT = """
suppressMessages(library(pROC))
for (path in commandArgs(trailingOnly = TRUE)) {
  d <- read.csv(path)
  ra <- roc(d$label, d$a, levels = c(0, 1), direction = "<", quiet = TRUE)
  rb <- roc(d$label, d$b, levels = c(0, 1), direction = "<", quiet = TRUE)
  t <- roc.test(ra, rb, method = "delong", paired = TRUE)
  ci <- ci.auc(ra, method = "delong")
  cat(basename(path), sprintf("%.17g", c(t$estimate, t$statistic, t$p.value,
      var(ra, method = "delong"), ci[1], ci[3])), "\\n")
}
"""


def _data_sets() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed labels and two classifiers' scores: continuous, tied, unbalanced, below chance."""
    rng = np.random.default_rng(20140601)
    sets = {}
    y = rng.permutation(np.repeat([0, 1], [40, 40]))
    sets["balanced"] = (y, y + rng.normal(0, 1, 80), 0.6 * y + rng.normal(0, 1, 80))
    y = rng.permutation(np.repeat([0, 1], [90, 12]))
    # Scores rounded to one decimal and a 1-5 rating: many ties within and across classes.
    sets["ties_unbalanced"] = (
        y,
        np.round(0.8 * y + rng.normal(0, 0.7, y.size), 1),
        np.clip(np.round(2.5 + 1.2 * y + rng.normal(0, 1, y.size)), 1, 5),
    )
    # The test set's proportions (234 NORMAL, 390 PNEUMONIA) with two correlated networks.
    y = rng.permutation(np.repeat([0, 1], [234, 390]))
    shared = rng.normal(0, 1, y.size)
    sets["test_set_correlated"] = (
        y,
        1 / (1 + np.exp(-(1.5 * y + shared + rng.normal(0, 0.5, y.size)))),
        1 / (1 + np.exp(-(1.3 * y + shared + rng.normal(0, 0.5, y.size)))),
    )
    y = rng.permutation(np.repeat([0, 1], [25, 60]))
    sets["below_chance"] = (
        y,
        np.round(rng.random(y.size) + 0.3 * y, 2),
        np.round(rng.random(y.size) - 0.4 * y, 2),
    )
    return sets


DATA_SETS = _data_sets()


def _missing_r() -> str | None:
    if shutil.which("Rscript") is None:
        return "Rscript is not installed"
    check = subprocess.run(
        ["Rscript", "-e", "quit(status = !requireNamespace('pROC', quietly = TRUE))"],
        capture_output=True,
        check=False,
    )
    return None if check.returncode == 0 else "the R package pROC is not installed"


@pytest.fixture(scope="module")
def proc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[float]]:
    """pROC's AUCs, z, p, variance and CI per data set; skipped without R (failed under CI)."""
    reason = _missing_r()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"{reason} (CI=true: the pROC comparison must not be skipped; "
                ".ci/run must install r-base-core r-cran-proc)"
            )
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("proc")
    paths = []
    for name, (y, a, b) in DATA_SETS.items():
        path = folder / f"{name}.csv"
        np.savetxt(
            path, np.c_[y, a, b], delimiter=",", header="label,a,b", comments="", fmt="%.17g"
        )
        paths.append(str(path))
    script = folder / "delong.R"
    script.write_text(R_SCRIPT)
    run = subprocess.run(
        ["Rscript", str(script), *paths], capture_output=True, text=True, check=False, timeout=120
    )
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines() if line.strip()]
    return {Path(row[0]).stem: [float(v) for v in row[1:]] for row in rows}


@pytest.mark.parametrize("name", list(DATA_SETS))
def test_paired_test_agrees_with_proc(proc: dict[str, list[float]], name: str) -> None:
    auc_a, auc_b, z, p, _, _, _ = proc[name]
    result = delong_test(*DATA_SETS[name])
    assert result.auc_a == pytest.approx(auc_a, abs=1e-6)
    assert result.auc_b == pytest.approx(auc_b, abs=1e-6)
    assert result.z == pytest.approx(z, abs=1e-6)
    assert result.p == pytest.approx(p, abs=1e-6, rel=1e-6)


@pytest.mark.parametrize("name", list(DATA_SETS))
def test_one_auc_variance_and_interval_agree_with_proc(
    proc: dict[str, list[float]], name: str
) -> None:
    *_, variance, low, high = proc[name]
    y, a, _ = DATA_SETS[name]
    interval = auc_interval(y, a)
    assert interval.variance == pytest.approx(variance, abs=1e-9)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-6)


def test_below_chance_classifier_is_not_flipped(proc: dict[str, list[float]]) -> None:
    assert proc["below_chance"][1] < 0.5
    assert delong_test(*DATA_SETS["below_chance"]).auc_b < 0.5


def _brute_force(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """DeLong (1988) from every positive-negative pair: AUC difference, variance, z."""
    components = []
    for s in (a, b):
        psi = (s[y == 1][:, None] > s[y == 0][None, :]) + 0.5 * (
            s[y == 1][:, None] == s[y == 0][None, :]
        )
        components.append((psi.mean(axis=1), psi.mean(axis=0)))
    v10 = np.stack([c[0] for c in components])
    v01 = np.stack([c[1] for c in components])
    s = np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]
    variance = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    difference = v10[0].mean() - v10[1].mean()
    return difference, variance, difference / math.sqrt(variance)


@pytest.mark.parametrize("name", list(DATA_SETS))
def test_midrank_algorithm_equals_pairwise_delong(name: str) -> None:
    y, a, b = DATA_SETS[name]
    difference, variance, z = _brute_force(y, a, b)
    result = delong_test(y, a, b)
    assert result.difference == pytest.approx(difference, abs=1e-12)
    assert result.variance == pytest.approx(variance, rel=1e-10)
    assert result.z == pytest.approx(z, rel=1e-10)


def test_swapping_classifiers_negates_z_and_keeps_p() -> None:
    y, a, b = DATA_SETS["balanced"]
    forward, backward = delong_test(y, a, b), delong_test(y, b, a)
    assert forward.z == pytest.approx(-backward.z)
    assert forward.p == pytest.approx(backward.p)
    assert forward.z > 0 and 0 < forward.p < 0.05


def test_one_class_leaves_everything_undefined() -> None:
    result = delong_test([1, 1, 1], [0.1, 0.5, 0.9], [0.3, 0.2, 0.1])
    assert result.auc_a is result.auc_b is result.difference is None
    assert result.variance is result.z is result.p is None
    assert auc_interval([0, 0], [0.1, 0.2]).auc is None


def test_a_single_positive_has_aucs_but_no_variance() -> None:
    result = delong_test([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.9], [0.1, 0.5, 0.3, 0.4])
    assert (result.auc_a, result.auc_b) == pytest.approx((1.0, 2 / 3))
    assert result.variance is result.z is result.p is None
    interval = auc_interval([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.9])
    assert interval.auc == 1.0 and interval.low is None


def test_identical_or_perfect_classifiers_have_zero_variance_and_no_test() -> None:
    y, a, _ = DATA_SETS["test_set_correlated"]
    same = delong_test(y, a, a.copy())
    assert same.variance == 0.0 and same.difference == 0.0
    assert same.z is None and same.p is None
    perfect = delong_test([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], [0.3, 0.4, 0.6, 0.7])
    assert (perfect.auc_a, perfect.auc_b, perfect.variance) == (1.0, 1.0, 0.0)
    assert perfect.p is None


def test_nan_scores_rank_below_every_score() -> None:
    y, a, b = (v.copy() for v in DATA_SETS["ties_unbalanced"])
    a[[0, 5, 17, 40]] = np.nan
    lowest = np.where(np.isnan(a), np.nanmin(a) - 1, a)
    assert delong_test(y, a, b) == delong_test(y, lowest, b)
    diverged = delong_test(y, np.full(y.size, np.nan), b)
    assert diverged.auc_a == 0.5
    assert diverged.p is not None and diverged.p < 0.05


def test_labels_other_than_zero_and_one_are_rejected() -> None:
    with pytest.raises(ValueError, match="labels"):
        delong_test([0, 1, 2], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="shape"):
        delong_test([0, 1], [0.1, 0.2, 0.3], [0.1, 0.2])
