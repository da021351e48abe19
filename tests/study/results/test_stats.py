"""Statistics over seeds: sample SD, Student-t intervals, and an honest sentence on the lead."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from study.results import compare, per_epoch, summarize

# Kim & Ye (2022), one learning rate's validation accuracy over three seeds (Table 4).
PAPER_SEEDS = [0.9919, 0.9181, 0.9214]


def test_paper_seeds_give_the_papers_mean_and_sample_sd() -> None:
    summary = summarize(PAPER_SEEDS)
    assert round(summary.mean, 4) == 0.9438
    assert round(summary.sd, 3) == 0.042  # the population SD would be 0.034
    half = stats.t.ppf(0.975, 2) * statistics.stdev(PAPER_SEEDS) / math.sqrt(3)
    assert summary.ci_low == pytest.approx(summary.mean - half)
    assert summary.ci_high == pytest.approx(summary.mean + half)
    assert summary.ci_low < 0.9181 and summary.ci_high > 0.9919
    assert (summary.n, summary.undefined) == (3, 0)


def test_one_seed_has_a_mean_but_no_sd_or_interval() -> None:
    summary = summarize([0.9])
    assert (summary.mean, summary.sd, summary.ci_low, summary.ci_high) == (0.9, None, None, None)
    assert summary.to_dict()["ci95"] is None


def test_identical_seeds_give_zero_sd_and_a_point_interval() -> None:
    summary = summarize([0.75, 0.75, 0.75])
    assert summary.sd == 0
    assert summary.ci_low == summary.ci_high == pytest.approx(0.75)


def test_undefined_values_are_counted_not_averaged() -> None:
    summary = summarize([0.5, None, math.nan, 0.7])
    assert summary.values == (0.5, 0.7)
    assert summary.undefined == 2
    assert summary.mean == pytest.approx(0.6)
    empty = summarize([None])
    assert (empty.mean, empty.n, empty.undefined) == (None, 0, 1)


def test_a_lead_smaller_than_the_spread_is_not_called_significant() -> None:
    runner_up = [0.9300, 0.9050, 0.9120]
    comparison = compare(
        {"lr 0.001": summarize(PAPER_SEEDS), "lr 0.0001": summarize(runner_up)},
        "validation accuracy",
    )
    welch = stats.ttest_ind(PAPER_SEEDS, runner_up, equal_var=False)
    assert (comparison.best, comparison.runner_up) == ("lr 0.001", "lr 0.0001")
    assert comparison.p_value == pytest.approx(welch.pvalue)
    assert comparison.t == pytest.approx(welch.statistic)
    assert comparison.df == pytest.approx(welch.df)
    assert comparison.p_value >= 0.05 and not comparison.significant
    assert "not statistically significant" in comparison.sentence
    assert "cannot be ranked" in comparison.sentence
    assert f"p = {welch.pvalue:.4f}" in comparison.sentence
    assert comparison.sentence.count(".") >= 1 and "\n" not in comparison.sentence


def test_a_clear_lead_is_called_significant() -> None:
    best, other = [0.95, 0.96, 0.955], [0.80, 0.81, 0.79]
    comparison = compare(
        {"a": summarize(other), "b": summarize(best), "c": summarize([0.5, 0.6])},
        "validation accuracy",
    )
    assert (comparison.best, comparison.runner_up) == ("b", "a")
    assert comparison.p_value == pytest.approx(
        stats.ttest_ind(best, other, equal_var=False).pvalue
    )
    assert comparison.significant
    assert "is statistically significant (p < 0.05)" in comparison.sentence
    assert comparison.difference == pytest.approx(statistics.mean(best) - statistics.mean(other))


def test_a_loss_ranks_the_lowest_mean_first() -> None:
    comparison = compare(
        {"a": summarize([0.3, 0.31, 0.29]), "b": summarize([0.2, 0.22, 0.21])},
        "validation loss",
        higher_is_better=False,
    )
    assert comparison.best == "b"
    assert "lowest mean validation loss" in comparison.sentence


@pytest.mark.parametrize(
    ("best", "other", "reason"),
    [
        ([0.9], [0.8, 0.82], "single seed"),
        ([0.9, 0.9], [0.8, 0.8], "zero spread"),
    ],
)
def test_an_untestable_lead_is_not_established(best: list, other: list, reason: str) -> None:
    comparison = compare({"a": summarize(best), "b": summarize(other)}, "validation accuracy")
    assert comparison.p_value is None and not comparison.significant
    assert reason in comparison.sentence
    assert "not established" in comparison.sentence


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_one_zero_spread_side_is_still_tested() -> None:
    comparison = compare(
        {"a": summarize([0.9, 0.9, 0.9]), "b": summarize([0.7, 0.8, 0.75])}, "accuracy"
    )
    expected = stats.ttest_ind([0.9, 0.9, 0.9], [0.7, 0.8, 0.75], equal_var=False).pvalue
    assert comparison.p_value == pytest.approx(expected)


def test_equal_means_are_a_tie_and_one_group_is_no_comparison() -> None:
    tie = compare({"a": summarize([0.8, 0.9]), "b": summarize([0.85, 0.85])}, "accuracy")
    assert "tied" in tie.sentence and not tie.significant
    assert compare({"a": summarize([0.8, 0.9]), "b": summarize([None])}, "accuracy") is None


def test_per_epoch_summaries_follow_runs_of_different_lengths() -> None:
    summaries = per_epoch([[0.5, 0.6, 0.7], [0.7, 0.8], [0.6, None, 0.9]])
    assert [s.n for s in summaries] == [3, 2, 2]
    assert summaries[0].mean == pytest.approx(0.6)
    assert summaries[0].sd == pytest.approx(statistics.stdev([0.5, 0.7, 0.6]))
    assert summaries[1].undefined == 1
    assert per_epoch([]) == []
