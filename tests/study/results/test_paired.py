"""Paired t-test, McNemar's exact test, Holm's correction and the seeds-needed calculation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from study.results._paired import (
    MAX_SEEDS,
    holm,
    mcnemar_exact,
    paired_t_test,
    seeds_needed,
)


def test_paired_t_matches_the_formula_on_differences() -> None:
    a = [0.91, 0.93, 0.90, 0.94, 0.92]
    b = [0.89, 0.92, 0.90, 0.91, 0.90]
    d = np.subtract(a, b)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    result = paired_t_test(a, b)
    assert result.n == 5
    assert result.mean_difference == pytest.approx(d.mean())
    assert result.sd_difference == pytest.approx(d.std(ddof=1))
    assert result.statistic == pytest.approx(t)
    assert result.p == pytest.approx(2 * stats.t.sf(abs(t), df=4))


def test_pairs_with_a_missing_value_are_left_out() -> None:
    result = paired_t_test([0.9, None, 0.8, math.nan, 0.7], [0.85, 0.8, 0.7, 0.6, 0.5])
    assert result.n == 3
    assert result.mean_difference == pytest.approx((0.05 + 0.1 + 0.2) / 3)
    assert result.p is not None


def test_paired_t_is_undefined_below_two_pairs_or_without_spread() -> None:
    assert paired_t_test([], []).mean_difference is None
    one = paired_t_test([0.9], [0.8])
    assert one.mean_difference == pytest.approx(0.1)
    assert one.sd_difference is one.statistic is one.p is None
    # 0.3 - 0.2 and 0.4 - 0.3 differ in the last bit; that is still no spread.
    same_gain = paired_t_test([0.3, 0.4, 0.5], [0.2, 0.3, 0.4])
    assert same_gain.sd_difference == 0.0
    assert same_gain.statistic is None and same_gain.p is None
    with pytest.raises(ValueError, match="paired"):
        paired_t_test([0.1, 0.2], [0.1])


def test_mcnemar_is_the_exact_binomial_test_on_discordant_images() -> None:
    rng = np.random.default_rng(7)
    correct_a = rng.random(624) < 0.9
    correct_b = np.where(rng.random(624) < 0.1, ~correct_a, correct_a)
    correct_b[:15] = False
    only_a = int((correct_a & ~correct_b).sum())
    only_b = int((~correct_a & correct_b).sum())
    expected = stats.binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue
    result = mcnemar_exact(correct_a, correct_b)
    assert (result.only_a, result.only_b) == (only_a, only_b)
    assert result.statistic == min(only_a, only_b)
    assert result.p == pytest.approx(expected, rel=1e-10)
    assert result.p < 0.05


def test_mcnemar_small_table_by_hand() -> None:
    # a right and b wrong on 6 images, the reverse on 1: p = 2 * P(X <= 1), X ~ Bin(7, 1/2).
    correct_a = [True] * 6 + [False] + [True] * 10
    correct_b = [False] * 6 + [True] + [True] * 10
    result = mcnemar_exact(correct_a, correct_b)
    assert result.p == pytest.approx(2 * (1 + 7) / 2**7)
    assert mcnemar_exact([True, False], [True, False]).p == 1.0


def test_holm_by_hand_with_none_passing_through() -> None:
    # Sorted 0.01, 0.02, 0.03, 0.04 over m = 4: 0.04, 0.06, 0.06 (monotone), 0.06.
    adjusted = holm([0.03, None, 0.01, 0.04, 0.02])
    assert adjusted[1] is None
    assert adjusted == pytest.approx([0.06, None, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([None, None]) == [None, None]
    assert holm([]) == []


def _simulated_power(d: float, n: int, rng: np.random.Generator, trials: int = 20_000) -> float:
    """Share of simulated paired experiments (differences ~ N(d, 1)) that the t-test rejects."""
    differences = rng.normal(d, 1.0, size=(trials, n))
    t = differences.mean(axis=1) / (differences.std(axis=1, ddof=1) / math.sqrt(n))
    return float(np.mean(np.abs(t) > stats.t.isf(0.025, n - 1)))


@pytest.mark.parametrize("d", [0.8, 1.5, 3.0, 10.0])
def test_seeds_needed_reach_the_power_by_simulation_and_one_fewer_does_not(d: float) -> None:
    rng = np.random.default_rng(int(d * 10))
    needed = seeds_needed(0.01 * d, 0.01)
    assert needed.effect_size == pytest.approx(d)
    seeds = needed.seeds
    assert seeds is not None and seeds >= 2
    # 20,000 trials: the SD of a simulated power near 0.8 is 0.003, so 0.015 is five SDs.
    assert _simulated_power(d, seeds, rng) > 0.8 - 0.015
    if seeds > 2:
        assert _simulated_power(d, seeds - 1, rng) < 0.8 + 0.015


@pytest.mark.parametrize("d", [0.15, 0.3, 0.5, 0.8, 1.2, 2.0, 3.5, 5.0])
def test_seeds_needed_is_where_statsmodels_power_first_reaches_80_percent(d: float) -> None:
    # statsmodels' power function is the reference where it is finite: below 0.8 for d up to
    # about 5.9 (it turns NaN near power 1 and at n = 2 for larger d).
    n = np.arange(2, MAX_SEEDS + 1)
    reference = TTestPower().power(effect_size=d, nobs=n, alpha=0.05, alternative="two-sided")
    first = int(np.flatnonzero(reference >= 0.8)[0])
    assert np.isfinite(reference[: first + 1]).all()
    expected = int(n[first])
    assert seeds_needed(0.01 * d, 0.01).seeds == expected
    assert seeds_needed(-0.01 * d, 0.01).seeds == expected


def test_seeds_needed_known_values_and_sign() -> None:
    # G*Power's answers: d = 0.5 needs 34 pairs and d = 1 needs 10 (two-sided, 0.05, 0.8).
    assert seeds_needed(0.005, 0.01).seeds == 34
    assert seeds_needed(-0.01, 0.01).seeds == 10
    assert seeds_needed(1e6, 1.0).seeds == 2


def test_seeds_needed_undefined_or_beyond_the_cap() -> None:
    for mean, sd in [(0.0, 0.01), (0.01, 0.0), (None, 0.01), (0.01, None), (math.nan, 1.0)]:
        needed = seeds_needed(mean, sd)
        assert needed.seeds is None and needed.effect_size is None and not needed.beyond_cap
    tiny = seeds_needed(1e-4, 0.01)
    assert tiny.seeds is None and tiny.beyond_cap
    # d = 0.1 needs 787 pairs; d = 0.08 would need about 1,229, beyond MAX_SEEDS (1,000).
    assert seeds_needed(0.1, 1.0).seeds == 787 < MAX_SEEDS
    assert seeds_needed(0.08, 1.0).beyond_cap
