"""Paired tests for comparing two learning rates: over seeds, over images, and many at once.

Seeds pair two learning rates' runs (same seed, same data order), so the paired t-test uses the
spread of the differences, not of each group. McNemar's test compares two networks' right and
wrong answers on the same images. Holm's correction keeps the family-wise error at alpha when a
report tests several pairs, and the power calculation says how many seeds an observed
difference would need. Numbers undefined for the data are ``None``, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05
POWER = 0.8
# Beyond this many seeds the answer is "not with a feasible study", not a number to plan with.
MAX_SEEDS = 1000
# Two seeds reach any usual power from this effect size on (power 1.0 to double precision);
# larger effects are searched as this one, since scipy's noncentral t is slow or NaN far out.
_LARGE_EFFECT = 100.0


@dataclass(frozen=True)
class PairedT:
    """Paired t-test of a - b over seeds, two-sided.

    ``n`` counts the pairs used (pairs with a missing or non-finite value are left out).
    ``mean_difference`` is ``None`` without pairs, ``sd_difference`` (sample SD) below two
    pairs; ``statistic`` and ``p`` are ``None`` also when the differences do not vary.
    """

    n: int
    mean_difference: float | None
    sd_difference: float | None
    statistic: float | None
    p: float | None


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two classifiers' correctness on the same images.

    ``only_a`` counts images a got right and b wrong, ``only_b`` the reverse; ``statistic`` is
    the smaller of the two and ``p`` the two-sided exact binomial p on the discordant images
    (1.0 when there are none: the classifiers never disagree, so there is no evidence).
    """

    only_a: int
    only_b: int
    statistic: int
    p: float


@dataclass(frozen=True)
class SeedsNeeded:
    """Seeds (pairs) a two-sided paired t-test needs to detect an effect at the given power.

    ``seeds`` is ``None`` when the effect is undefined (zero mean difference, or an SD that is
    missing, zero or not finite) and when more than ``MAX_SEEDS`` would be needed, which
    ``beyond_cap`` then says. ``effect_size`` is |mean| / SD (Cohen's d of the differences).
    """

    seeds: int | None
    effect_size: float | None
    beyond_cap: bool


def paired_t_test(
    a: Sequence[float | None] | np.ndarray, b: Sequence[float | None] | np.ndarray
) -> PairedT:
    """Paired t-test (scipy's ``ttest_rel``) of two learning rates' metric over the same seeds.

    Args:
        a: One value per seed for the first learning rate; None or NaN for a missing value.
        b: The values for the second learning rate, seed for seed in the same order.
    """
    if len(a) != len(b):
        raise ValueError(f"{len(a)} and {len(b)} values cannot be paired")
    x = np.array([math.nan if v is None else v for v in a], dtype=np.float64)
    y = np.array([math.nan if v is None else v for v in b], dtype=np.float64)
    kept = np.isfinite(x) & np.isfinite(y)
    x, y = x[kept], y[kept]
    n = int(kept.sum())
    if n == 0:
        return PairedT(0, None, None, None, None)
    differences = x - y
    mean = float(differences.mean())
    if n < 2:
        return PairedT(n, mean, None, None, None)
    sd = float(differences.std(ddof=1))
    # Equal gains such as 0.3 - 0.2 and 0.4 - 0.3 differ in the last bit; that is no spread,
    # and the t statistic of such a residue would be enormous and meaningless.
    scale = max(1.0, float(np.abs(np.concatenate([x, y])).max()))
    if sd <= 1e-12 * scale:
        return PairedT(n, mean, 0.0, None, None)
    result = stats.ttest_rel(x, y)
    return PairedT(n, mean, sd, float(result.statistic), float(result.pvalue))


def mcnemar_exact(
    correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray
) -> McNemar:
    """McNemar's exact test (statsmodels) that two classifiers are equally often right.

    Args:
        correct_a: Per image, whether classifier a's prediction was right.
        correct_b: Per image, the same for classifier b, in the same image order.
    """
    a = np.asarray(correct_a, dtype=bool).ravel()
    b = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"correctness of {a.size} and {b.size} images cannot be paired")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    table = [[int((a & b).sum()), only_a], [only_b, int((~a & ~b).sum())]]
    result = mcnemar(table, exact=True)
    return McNemar(only_a, only_b, int(result.statistic), float(result.pvalue))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (statsmodels), in the input order.

    ``None`` entries (tests that could not be done) stay ``None`` and do not count towards the
    number of tests.

    Args:
        p_values: Unadjusted p-values of the family of tests.
    """
    defined = [i for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    if defined:
        corrected = multipletests([p_values[i] for i in defined], method="holm")[1]
        for i, p in zip(defined, corrected, strict=True):
            adjusted[i] = float(p)
    return adjusted


def seeds_needed(
    mean_difference: float | None,
    sd_difference: float | None,
    *,
    power: float = POWER,
    alpha: float = ALPHA,
) -> SeedsNeeded:
    """Smallest number of seeds at which a two-sided paired t-test reaches ``power``.

    The power at n pairs is P(|T| > t_crit) for T noncentral t with n - 1 degrees of freedom
    and noncentrality d * sqrt(n), searched over 2..MAX_SEEDS pairs. This does not use
    statsmodels' ``TTestPower.solve_power``: with statsmodels 0.15 its root finder fails or
    answers 2 instead of 3 for effects above d of about 5.9, because its lower tail at one
    degree of freedom is NaN; both tails are computed here as upper tails, which stay finite.

    Args:
        mean_difference: Observed mean of the paired differences.
        sd_difference: Observed sample SD of the paired differences.
        power: Target probability of rejecting. Defaults to 0.8.
        alpha: Two-sided significance level. Defaults to 0.05.
    """
    if (
        mean_difference is None
        or sd_difference is None
        or not math.isfinite(mean_difference)
        or not math.isfinite(sd_difference)
        or mean_difference == 0
        or sd_difference <= 0
    ):
        return SeedsNeeded(None, None, False)
    d = abs(mean_difference) / sd_difference
    n = np.arange(2, MAX_SEEDS + 1)
    critical = stats.t.isf(alpha / 2, n - 1)
    noncentrality = min(d, _LARGE_EFFECT) * np.sqrt(n)
    achieved = stats.nct.sf(critical, n - 1, noncentrality) + stats.nct.sf(
        critical, n - 1, -noncentrality
    )
    enough = np.flatnonzero(achieved >= power)
    if enough.size == 0:
        return SeedsNeeded(None, d, True)
    return SeedsNeeded(int(n[enough[0]]), d, False)
