"""Statistics over seeds: sample SD, Student-t intervals, paired tests of every pair with Holm's
correction, and an honest sentence on the lead."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from study.results import (
    Group,
    PairedTest,
    Ranking,
    paired_over_seeds,
    per_epoch,
    rank,
    summarize,
)
from study.results._figures import epoch_series
from study.results._paired import seeds_needed
from study.results._stats import fewer_seeds_from

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


def ranked(
    values: dict[str, list[float | None]],
    *,
    higher_is_better: bool = True,
    diverged: dict[str, list[bool]] | None = None,
) -> tuple[Ranking | None, list[PairedTest]]:
    """Rank groups given their values per seed (seed = position), as the export does."""
    tests = paired_over_seeds({k: dict(enumerate(v)) for k, v in values.items()}, "metric")
    summaries = {k: summarize(v, (diverged or {}).get(k, ())) for k, v in values.items()}
    ranking = rank(summaries, tests, "validation accuracy", higher_is_better=higher_is_better)
    return ranking, tests


def test_a_left_out_value_of_a_diverged_seed_is_named() -> None:
    summary = summarize([0.5, None, 0.7], [False, True, False])
    assert (summary.n, summary.undefined, summary.diverged) == (2, 1, 1)
    assert summary.left_out() == "1 of 3 diverged"
    mixed = summarize([None, math.nan, 0.7], [True, False, False])
    assert mixed.left_out() == "1 of 3 diverged, 1 of 3 undefined"
    assert summarize([0.5, 0.7]).left_out() is None


def test_every_pair_is_tested_over_shared_seeds_with_holm_across_pairs() -> None:
    values = {
        "a": [0.90, 0.92, 0.91, 0.95],
        "b": [0.85, 0.90, None, 0.88],
        "c": [0.70, 0.75, 0.72, 0.71],
    }
    tests = paired_over_seeds({k: dict(enumerate(v)) for k, v in values.items()}, "val_accuracy")
    assert [(t.a, t.b) for t in tests] == [("a", "b"), ("a", "c"), ("b", "c")]
    for test in tests:
        shared = [i for i in range(4) if values[test.a][i] is not None and values[test.b][i]]
        x = [values[test.a][i] for i in shared]
        y = [values[test.b][i] for i in shared]
        expected = stats.ttest_rel(x, y)
        assert (test.n, test.seed, test.test) == (len(shared), None, "paired t")
        assert test.p == pytest.approx(expected.pvalue)
        assert test.statistic == pytest.approx(expected.statistic)
        differences = [u - v for u, v in zip(x, y, strict=True)]
        assert test.difference == pytest.approx(statistics.mean(differences))
        # Planned at Holm's strictest step: alpha over the three pairs.
        needed = seeds_needed(
            statistics.mean(differences), statistics.stdev(differences), alpha=0.05 / 3
        )
        assert test.details["seeds_needed"] == needed.seeds
        assert test.details["seeds_needed_alpha"] == pytest.approx(0.05 / 3)
    holm = multipletests([t.p for t in tests], method="holm")[1]
    assert [t.p_holm for t in tests] == pytest.approx(list(holm))


def test_a_lead_significant_after_holm_ranks_first() -> None:
    ranking, tests = ranked(
        {
            "b": [0.80, 0.81, 0.79, 0.805],
            "a": [0.95, 0.96, 0.955, 0.958],
            "c": [0.50, 0.60, 0.55, 0.52],
        }
    )
    assert ranking is not None
    assert (ranking.leader, ranking.ahead_of, ranking.not_separated) == ("a", ["b", "c"], [])
    holm = {frozenset((t.a, t.b)): t.p_holm for t in tests}
    assert max(holm[frozenset(("a", "b"))], holm[frozenset(("a", "c"))]) < 0.05
    assert "By paired t-tests over seeds, Holm-corrected over the 3 pairs, it is ahead of b" in (
        ranking.sentence
    )
    assert ranking.sentence.endswith("So a ranks first on this evidence.")
    assert "Welch" not in ranking.sentence


def test_a_gap_that_is_not_significant_says_how_many_seeds_it_needs() -> None:
    runner_up = [0.9300, 0.9050, 0.9120]
    ranking, (test,) = ranked({"lr 0.001": PAPER_SEEDS, "lr 0.0001": runner_up})
    assert ranking is not None and ranking.not_separated == ["lr 0.0001"]
    differences = [a - b for a, b in zip(PAPER_SEEDS, runner_up, strict=True)]
    assert test.p == pytest.approx(stats.ttest_rel(PAPER_SEEDS, runner_up).pvalue)
    assert test.p_holm == test.p > 0.05  # one pair: Holm changes nothing
    needed = seeds_needed(statistics.mean(differences), statistics.stdev(differences)).seeds
    assert needed is not None and needed > 3
    assert (
        f"it is not significantly ahead of lr 0.0001 (by {statistics.mean(differences):.4f}, "
        f"p_holm = {test.p:.4f}, {needed} seeds needed)"
    ) in ranking.sentence
    assert "n = 3 seeds is too small to rank these" in ranking.sentence
    assert "paired t at alpha 0.05, to detect" in ranking.sentence  # one pair: no 0.05/1
    assert "80% power, paired t at alpha 0.05" in ranking.sentence
    assert ranking.sentence.endswith("So the first place is not established on this evidence.")


def test_one_seed_is_too_small_to_rank() -> None:
    ranking, (test,) = ranked({"a": [0.9], "b": [0.8]})
    assert test.p is None and test.n == 1
    assert ranking is not None and ranking.untestable == ["b"] and ranking.ahead_of == []
    assert "no paired t-test is possible against b (only 1 seed has both; n is too small" in (
        ranking.sentence
    )
    assert "not established" in ranking.sentence


def test_a_gap_without_spread_cannot_be_tested_and_equal_seeds_are_a_tie() -> None:
    ranking, _ = ranked({"a": [0.9, 0.8], "b": [0.8, 0.7]})
    assert ranking is not None and ranking.untestable == ["b"]
    assert "the paired differences do not vary" in ranking.sentence
    tie, _ = ranked({"a": [0.8, 0.9], "b": [0.8, 0.9], "c": [0.5, 0.6]})
    assert tie is not None and "b" in tie.not_separated and "it is tied with b" in tie.sentence
    assert "over seeds (no pair gives a p-value), it is tied with b" in tie.sentence
    # A tie has no p-value: Holm's correction counts the other two pairs, and says so.
    tie, _ = ranked({"a": [0.8, 0.9, 0.85], "b": [0.8, 0.9, 0.85], "c": [0.5, 0.7, 0.55]})
    assert tie is not None and "Holm-corrected over the 2 pairs with a p-value (of 3), " in (
        tie.sentence
    )
    assert ranked({"a": [0.8, 0.9], "b": [None, None]})[0] is None


def test_a_loss_ranks_the_lowest_mean_and_names_what_diverged() -> None:
    ranking, _ = ranked(
        {"a": [0.30, 0.31, 0.29], "b": [0.20, None, 0.21]},
        higher_is_better=False,
        diverged={"b": [False, True, False]},
    )
    assert ranking is not None and ranking.leader == "b"
    assert "b has the lowest mean validation accuracy (mean 0.2050, SD 0.0071, n = 2; " in (
        ranking.sentence
    )
    assert "1 of 3 diverged)" in ranking.sentence


def test_per_epoch_summaries_follow_runs_of_different_lengths() -> None:
    summaries = per_epoch([[0.5, 0.6, 0.7], [0.7, 0.8], [0.6, None, 0.9]])
    assert [s.n for s in summaries] == [3, 2, 2]
    assert summaries[0].mean == pytest.approx(0.6)
    assert summaries[0].sd == pytest.approx(statistics.stdev([0.5, 0.7, 0.6]))
    assert summaries[1].undefined == 1
    assert per_epoch([]) == []


def test_a_diverged_seed_holds_its_last_value_to_the_end_of_the_epoch_curves() -> None:
    """Training stops at a non-finite loss; the curve's mean must still count that seed, as
    the table of the last epoch does."""
    group = Group("lr 0.1", {}, [0, 1, 2], [0, 1, 2], {}, {}, diverged=[1], collapsed=[])
    records = {
        0: {"history": {"val_accuracy": [0.6, 0.7, 0.8]}, "diverged": False},
        1: {"history": {"val_accuracy": [0.5, 0.3]}, "diverged": True},
        2: {"history": {"val_accuracy": [0.7, 0.9, 0.9]}, "diverged": False},
    }
    series = epoch_series(group, records, "val_accuracy")
    assert series == [[0.6, 0.7, 0.8], [0.5, 0.3, 0.3], [0.7, 0.9, 0.9]]
    last = per_epoch(series)[-1]
    assert last.n == 3 and last.mean == pytest.approx(statistics.fmean([0.8, 0.3, 0.9]))
    records[1]["diverged"] = False  # a short history that did not diverge is not made up
    assert epoch_series(group, records, "val_accuracy")[1] == [0.5, 0.3]


def test_a_curve_that_leaves_out_a_nan_loss_says_from_which_epoch() -> None:
    """Dropping a diverged seed's NaN loss would make a mean seem to improve by itself."""
    summaries = per_epoch([[0.9, 0.8, 0.7], [1.5, math.nan, math.nan], [0.8, 0.7, 0.6]])
    assert fewer_seeds_from(summaries) == " (n = 2 of 3 from epoch 2)"
    assert fewer_seeds_from(per_epoch([[0.9, 0.8], [1.0, 0.9]])) == ""


def test_a_runner_up_ahead_on_the_shared_seeds_is_not_called_behind() -> None:
    """With a cell missing, the best mean can rest on a seed the other group lacks, while
    the paired test, over the seeds both have, is significant the other way."""
    ranking, (test,) = ranked({"a": [0.80, 0.81, 0.995, 0.82], "b": [0.83, 0.841, None, 0.849]})
    assert ranking is not None and ranking.leader == "a"
    assert test.p_holm is not None and test.p_holm < 0.05 and test.difference < 0
    assert (ranking.beaten_by, ranking.not_separated, ranking.ahead_of) == (["b"], [], [])
    assert (
        f"b is significantly ahead of it on the 3 seeds both have (by {-test.difference:.4f}, "
        f"p_holm = {test.p_holm:.4f})"
    ) in ranking.sentence
    assert "not significantly ahead" not in ranking.sentence
    assert "none is significant" not in ranking.sentence
    assert ranking.sentence.endswith("So the first place is not established on this evidence.")
    assert ranking.to_dict()["beaten_by"] == ["b"]
