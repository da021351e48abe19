"""Statistics over seeds: summaries, paired t-tests of every pair of groups, and the ranking.

The seed paper ranked learning rates on gaps smaller than their own standard deviations. Here
seeds pair two rates' runs (same seed, same data order), every pair of rates is tested, Holm's
correction keeps the family-wise error at alpha over the pairs, and one rate is said to lead
another only when the corrected test says so; otherwise the sentence says how many seeds that
gap would need. Undefined numbers (one seed, no spread) are ``None`` and the sentence says why,
instead of printing a misleading 0 or NaN.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from scipy import stats as scipy_stats

from study.results._paired import ALPHA, MAX_SEEDS, POWER, holm, paired_t_test, seeds_needed

CONFIDENCE = 0.95
PAIRED_T = "paired t"


@dataclass(frozen=True)
class Summary:
    """One group's values over its complete seeds.

    ``sd`` is the sample SD (n - 1), ``None`` below two values; the interval is the Student-t
    95% interval of the mean, ``None`` below two values and equal to the mean when the values
    do not vary. ``undefined`` counts the values left out as missing or not finite, and
    ``diverged`` how many of those are a diverged seed's (its loss), which tables then name.
    """

    values: tuple[float, ...]
    mean: float | None
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    undefined: int = 0
    diverged: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    def left_out(self) -> str | None:
        """What the mean leaves out, in words ("1 of 3 diverged"); None when nothing."""
        if not self.undefined:
            return None
        total = self.n + self.undefined
        parts = [f"{self.diverged} of {total} diverged"] if self.diverged else []
        if self.undefined > self.diverged:
            parts.append(f"{self.undefined - self.diverged} of {total} undefined")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "values": list(self.values),
            "n": self.n,
            "mean": self.mean,
            "sd": self.sd,
            "ci95": None if self.ci_low is None else [self.ci_low, self.ci_high],
            "undefined": self.undefined,
            "diverged": self.diverged,
            "left_out": self.left_out(),
        }


@dataclass(frozen=True)
class PairedTest:
    """One test of group ``a`` against group ``b`` on ``metric``, two-sided.

    ``test`` is ``"paired t"`` over seeds (``seed`` None), or ``"DeLong"`` or ``"McNemar"`` on
    one seed's shared test images. ``difference`` is a - b: the mean paired difference over
    seeds, the AUC difference, or the accuracy difference. ``n`` counts the pairs (seeds or
    images). ``p_holm`` is Holm-adjusted within the family of the same metric, test and seed.
    ``details`` holds what only that test has (seeds needed, AUCs, discordant counts), ``note``
    why a test could not be done.
    """

    metric: str
    a: str
    b: str
    seed: Any
    test: str
    n: int
    difference: float | None
    statistic: float | None
    p: float | None
    p_holm: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "a": self.a,
            "b": self.b,
            "seed": self.seed,
            "test": self.test,
            "n": self.n,
            "difference": self.difference,
            "statistic": self.statistic,
            "p": self.p,
            "p_holm": self.p_holm,
            **self.details,
            "note": self.note,
        }


@dataclass(frozen=True)
class Ranking:
    """What the paired tests over seeds support about the group with the best mean.

    ``ahead_of`` lists the groups the leader beats after Holm's correction, ``not_separated``
    those it was tested against without a significant gap (or a tie), ``untestable`` those no
    paired t-test could compare (fewer than two shared seeds, or differences without spread),
    ``beaten_by`` those significantly ahead of it on the seeds both have (possible only when
    seeds are missing: the leader's mean then rests on seeds the other lacks).
    """

    metric: str
    leader: str
    ahead_of: list[str]
    not_separated: list[str]
    untestable: list[str]
    beaten_by: list[str]
    sentence: str

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "leader": self.leader,
            "ahead_of": self.ahead_of,
            "not_separated": self.not_separated,
            "untestable": self.untestable,
            "beaten_by": self.beaten_by,
            "alpha": ALPHA,
            "power": POWER,
            "sentence": self.sentence,
        }


def summarize(values: Sequence[float | None], diverged: Sequence[bool] = ()) -> Summary:
    """Mean, sample SD and 95% CI of the finite values; None and NaN count as undefined.

    Args:
        values: One value per complete seed.
        diverged: Whether each seed diverged, aligned with ``values``; a left-out value of a
            diverged seed is counted in ``Summary.diverged``. Defaults to none diverged.
    """
    flags = list(diverged) or [False] * len(values)
    kept = tuple(float(v) for v in values if v is not None and _finite(v))
    left = [flag for value, flag in zip(values, flags, strict=True) if not _finite(value)]
    counts = len(left), sum(left)
    if not kept:
        return Summary(kept, None, None, None, None, *counts)
    mean = statistics.fmean(kept)
    if len(kept) < 2:
        return Summary(kept, mean, None, None, None, *counts)
    sd = statistics.stdev(kept)
    t = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df=len(kept) - 1))
    half = t * sd / math.sqrt(len(kept))
    return Summary(kept, mean, sd, mean - half, mean + half, *counts)


def per_epoch(series: Sequence[Sequence[float | None]]) -> list[Summary]:
    """One summary per epoch over several runs' per-epoch values (runs may differ in length)."""
    epochs = max((len(values) for values in series), default=0)
    return [summarize([values[i] for values in series if i < len(values)]) for i in range(epochs)]


def fewer_seeds_from(summaries: Sequence[Summary]) -> str:
    """A legend's note where a per-epoch mean leaves values out, e.g. " (n = 2 of 3 from epoch
    4)", else "": a diverged seed's loss is NaN from its epoch on, and a mean that drops it
    would otherwise seem to improve by itself."""
    for epoch, summary in enumerate(summaries, 1):
        if summary.undefined:
            return f" (n = {summary.n} of {summary.n + summary.undefined} from epoch {epoch})"
    return ""


def paired_over_seeds(
    per_seed: Mapping[str, Mapping[Any, float | None]], metric: str
) -> list[PairedTest]:
    """Paired t-test over the shared seeds of every pair of groups, Holm across the pairs.

    Each test carries the seeds a two-sided paired t-test would need to detect the observed
    mean difference at 80% power, given the observed SD of the differences, at alpha 0.05
    over the number of pairs with a p-value: the level of Holm's strictest step, so that a
    study planned on it can pass the correction.

    Args:
        per_seed: Group label -> seed -> value (None where missing or undefined), in the
            order the pairs are listed.
        metric: Name of the metric, e.g. ``"val_accuracy"``.
    """
    labels = list(per_seed)
    results = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            seeds = [seed for seed in per_seed[a] if seed in per_seed[b]]
            values = [per_seed[a][seed] for seed in seeds], [per_seed[b][seed] for seed in seeds]
            results.append((a, b, paired_t_test(*values)))
    # Seeds needed at the level of Holm's strictest step, which a planned study must pass.
    alpha = ALPHA / max(1, sum(result.p is not None for _, _, result in results))
    tests = []
    for a, b, result in results:
        needed = seeds_needed(result.mean_difference, result.sd_difference, alpha=alpha)
        tests.append(
            PairedTest(
                metric=metric,
                a=a,
                b=b,
                seed=None,
                test=PAIRED_T,
                n=result.n,
                difference=result.mean_difference,
                statistic=result.statistic,
                p=result.p,
                details={
                    "sd_difference": result.sd_difference,
                    "seeds_needed": needed.seeds,
                    "seeds_needed_beyond_cap": needed.beyond_cap,
                    "seeds_needed_alpha": alpha,
                },
            )
        )
    return holm_within(tests)


def holm_within(tests: Sequence[PairedTest]) -> list[PairedTest]:
    """``tests`` with ``p_holm`` set by Holm's correction within each (metric, test, seed)."""
    families: dict[tuple[str, str, Any], list[int]] = {}
    for index, test in enumerate(tests):
        families.setdefault((test.metric, test.test, test.seed), []).append(index)
    adjusted: list[float | None] = [None] * len(tests)
    for members in families.values():
        for index, p in zip(members, holm([tests[i].p for i in members]), strict=True):
            adjusted[index] = p
    return [replace(test, p_holm=p) for test, p in zip(tests, adjusted, strict=True)]


def rank(
    summaries: Mapping[str, Summary],
    tests: Sequence[PairedTest],
    title: str,
    *,
    higher_is_better: bool = True,
) -> Ranking | None:
    """What the Holm-corrected paired t-tests support about the best mean; None below two groups.

    The leader is the group with the best mean; it is only said to be ahead of a group whose
    paired test with it is significant after Holm's correction. For every other group the
    sentence says why not: no significant gap (with the seeds that gap would need), a tie, or
    no test possible.

    Args:
        summaries: Group label -> its summary over seeds; groups without a mean are left out.
        tests: The paired t-tests of this metric over seeds, from ``paired_over_seeds``.
        title: The metric as the sentence names it, e.g. ``"validation accuracy"``.
        higher_is_better: False for a loss. Defaults to `True`.
    """
    ranked = [
        (label, s)
        for label, s in sorted(
            summaries.items(), key=lambda item: item[1].mean or 0.0, reverse=higher_is_better
        )
        if s.mean is not None
    ]
    if len(ranked) < 2:
        return None
    leader, top = ranked[0]
    by_pair = {frozenset((t.a, t.b)): t for t in tests}
    ahead: list[tuple[str, PairedTest]] = []
    behind: list[tuple[str, PairedTest]] = []  # tested, not significant
    tied: list[str] = []
    untestable: list[tuple[str, PairedTest]] = []
    beaten: list[tuple[str, PairedTest]] = []  # ahead of the leader on the seeds both have
    for label, summary in ranked[1:]:
        test = by_pair[frozenset((leader, label))]
        # Equal means can differ in the last bit; that is a tie, not a lead.
        assert top.mean is not None and summary.mean is not None  # ranked groups have means
        if math.isclose(top.mean, summary.mean, rel_tol=1e-12) or (
            test.p is None and test.n >= 2 and test.difference == 0
        ):
            tied.append(label)
        elif test.p is None:
            untestable.append((label, test))
        elif _p_holm(test) < ALPHA and _advantage(test, leader, higher_is_better) > 0:
            ahead.append((label, test))
        elif _p_holm(test) < ALPHA:
            beaten.append((label, test))
        else:
            behind.append((label, test))

    def gap(label: str, test: PairedTest, needed: bool) -> str:
        by = _advantage(test, leader, higher_is_better)
        extra = f", {_needed(test)}" if needed else ""
        return f"{label} (by {by:.4f}, {_p('p_holm', _p_holm(test))}{extra})"

    clauses = []
    if ahead:
        clauses.append("it is ahead of " + _join([gap(label, t, False) for label, t in ahead]))
    if behind:
        clauses.append(
            "it is not significantly ahead of "
            + _join([gap(label, test, True) for label, test in behind])
        )
    if tied:
        clauses.append(f"it is tied with {_join(tied)}")
    if untestable:
        clauses.append(
            "no paired t-test is possible against "
            + _join([f"{label} ({_untestable(test)})" for label, test in untestable])
        )
    if beaten:
        overtaking = [
            f"{label} is significantly ahead of it on the {t.n} seeds both have (by "
            f"{-_advantage(t, leader, higher_is_better):.4f}, {_p('p_holm', _p_holm(t))})"
            for label, t in beaten
        ]
        clauses.append(_join(overtaking))
    lines = [
        f"{leader} has the {'highest' if higher_is_better else 'lowest'} mean {title} "
        f"({_describe(top)}).",
        f"By {PAIRED_T}-tests over seeds{_holm_over(tests)}, " + "; ".join(clauses) + ".",
    ]
    if beaten:
        lines.append(
            "The means rest on different seeds, as some cells are missing or undefined: "
            "the paired tests, over the seeds both have, are the comparison to read."
        )
    if behind:
        lines.append(_power(behind))
    left_out = [f"{label} ({s.left_out()})" for label, s in ranked[1:] if s.diverged]
    if left_out:
        lines.append(
            f"Means and tests leave out the {title} a diverged seed lacks: {_join(left_out)}."
        )
    lines.append(
        "So the first place is not established on this evidence."
        if behind or tied or untestable or beaten
        else f"So {leader} ranks first on this evidence."
    )
    return Ranking(
        metric=title,
        leader=leader,
        ahead_of=[label for label, _ in ahead],
        not_separated=[label for label, _ in behind] + tied,
        untestable=[label for label, _ in untestable],
        beaten_by=[label for label, _ in beaten],
        sentence=" ".join(lines),
    )


def _holm_over(tests: Sequence[PairedTest]) -> str:
    """The pairs Holm's correction counted, in words: those with a p-value."""
    counted = sum(test.p is not None for test in tests)
    if not counted:
        return " (no pair gives a p-value)"
    words = f", Holm-corrected over the {counted} pair{'s' * (counted != 1)}"
    return words if counted == len(tests) else f"{words} with a p-value (of {len(tests)})"


def _advantage(test: PairedTest, leader: str, higher_is_better: bool) -> float:
    """The leader's mean paired gap over the other group, positive when the leader is better."""
    sign = (1 if test.a == leader else -1) * (1 if higher_is_better else -1)
    return sign * (test.difference or 0.0)


def _p_holm(test: PairedTest) -> float:
    assert test.p_holm is not None  # Holm adjusts every p there is
    return test.p_holm


def _needed(test: PairedTest) -> str:
    if test.details["seeds_needed_beyond_cap"]:
        return f"over {MAX_SEEDS} seeds needed"
    return f"{test.details['seeds_needed']} seeds needed"


def _untestable(test: PairedTest) -> str:
    if test.n < 2:
        shared = f"only {test.n} seed has" if test.n == 1 else "no seed has"
        return f"{shared} both; n is too small to rank them, at least 2 seeds are needed"
    return "the paired differences do not vary, so the t statistic is undefined"


def _power(behind: Sequence[tuple[str, PairedTest]]) -> str:
    """What the seeds needed say: too few seeds, or enough and still no significant gap."""
    n = max(test.n for _, test in behind)
    short = any(
        test.details["seeds_needed_beyond_cap"] or test.details["seeds_needed"] > test.n
        for _, test in behind
    )
    pairs = round(ALPHA / behind[0][1].details["seeds_needed_alpha"])
    level = f"{ALPHA}/{pairs} (Holm's strictest step)" if pairs > 1 else f"{ALPHA}"
    meaning = (
        f"seeds needed: for {POWER:.0%} power, {PAIRED_T} at alpha {level}, to detect the "
        "observed gap at the observed SD of the paired differences"
    )
    if short:
        return f"n = {n} seeds is too small to rank these ({meaning})."
    return f"The study has the seeds such gaps need, yet none is significant ({meaning})."


def _describe(s: Summary) -> str:
    sd = "SD undefined" if s.sd is None else f"SD {s.sd:.4f}"
    left_out = s.left_out()
    return f"mean {s.mean:.4f}, {sd}, n = {s.n}" + (f"; {left_out}" if left_out else "")


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _p(name: str, p: float) -> str:
    return f"{name} < 0.0001" if p < 1e-4 else f"{name} = {p:.4f}"
