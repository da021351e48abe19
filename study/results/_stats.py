"""Statistics over seeds: mean, sample SD, Student-t interval, and Welch's test of the lead.

The seed paper ranked learning rates on gaps smaller than their own standard deviations. Here a
ranking is only stated as significant when Welch's t-test says so; otherwise the sentence says
that the rates cannot be told apart. Undefined numbers (one seed, no spread) are ``None`` and
the sentence says why, instead of printing a misleading 0 or NaN.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

CONFIDENCE = 0.95
ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    """One group's values over seeds.

    ``sd`` is the sample SD (n - 1), ``None`` below two values; the interval is the Student-t
    95% interval of the mean, ``None`` below two values and equal to the mean when the values
    do not vary. ``undefined`` counts values that were missing (e.g. the loss of a diverged run).
    """

    values: tuple[float, ...]
    mean: float | None
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    undefined: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    def to_dict(self) -> dict[str, object]:
        return {
            "values": list(self.values),
            "n": self.n,
            "mean": self.mean,
            "sd": self.sd,
            "ci95": None if self.ci_low is None else [self.ci_low, self.ci_high],
            "undefined": self.undefined,
        }


@dataclass(frozen=True)
class Comparison:
    """The best group by mean against the runner-up, with Welch's t-test where it is defined."""

    metric: str
    best: str
    runner_up: str
    difference: float
    t: float | None
    df: float | None
    p_value: float | None
    significant: bool
    sentence: str

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "best": self.best,
            "runner_up": self.runner_up,
            "difference": self.difference,
            "t": self.t,
            "df": self.df,
            "p_value": self.p_value,
            "significant": self.significant,
            "alpha": ALPHA,
            "sentence": self.sentence,
        }


def summarize(values: Sequence[float | None]) -> Summary:
    """Mean, sample SD and 95% CI of the finite values; None and NaN count as undefined."""
    kept = tuple(float(v) for v in values if v is not None and math.isfinite(v))
    undefined = len(values) - len(kept)
    if not kept:
        return Summary(kept, None, None, None, None, undefined)
    mean = statistics.fmean(kept)
    if len(kept) < 2:
        return Summary(kept, mean, None, None, None, undefined)
    sd = statistics.stdev(kept)
    t = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df=len(kept) - 1))
    half = t * sd / math.sqrt(len(kept))
    return Summary(kept, mean, sd, mean - half, mean + half, undefined)


def per_epoch(series: Sequence[Sequence[float | None]]) -> list[Summary]:
    """One summary per epoch over several runs' per-epoch values (runs may differ in length)."""
    epochs = max((len(values) for values in series), default=0)
    return [summarize([values[i] for values in series if i < len(values)]) for i in range(epochs)]


def compare(
    groups: Mapping[str, Summary], metric: str, *, higher_is_better: bool = True
) -> Comparison | None:
    """Compare the best group by mean with the runner-up; None with fewer than two groups.

    Args:
        groups: Group label (e.g. ``"lr=0.001"``) to its summary; groups without values are
            left out of the ranking.
        metric: Name used in the sentence, e.g. ``"validation accuracy"``.
        higher_is_better: False for a loss. Defaults to `True`.
    """
    ranked = sorted(
        ((label, s, s.mean) for label, s in groups.items() if s.mean is not None),
        key=lambda item: item[2],
        reverse=higher_is_better,
    )
    if len(ranked) < 2:
        return None
    (best, a, mean_a), (runner_up, b, mean_b) = ranked[0], ranked[1]
    # Means of equal values can differ in the last bit; that is a tie, not a lead.
    difference = 0.0 if math.isclose(mean_a, mean_b, rel_tol=1e-12) else abs(mean_a - mean_b)
    t, df, p = _welch(a, b)
    significant = p is not None and p < ALPHA and difference > 0
    lead = (
        f"{best} has the {'highest' if higher_is_better else 'lowest'} mean {metric} "
        f"({_describe(a)}), ahead of {runner_up} ({_describe(b)}) by {difference:.4f}"
    )
    if difference == 0:
        verdict = "they are tied, so neither leads"
    elif p is None:
        verdict = f"no test is possible ({_why_untestable(a, b)}), so the lead is not established"
    elif significant:
        verdict = (
            f"Welch's t-test gives t = {t:.2f}, df = {df:.1f}, {_p(p)}, so the lead is "
            f"statistically significant (p < {ALPHA})"
        )
    else:
        verdict = (
            f"Welch's t-test gives t = {t:.2f}, df = {df:.1f}, {_p(p)}, so the lead is not "
            f"statistically significant (p ≥ {ALPHA}): these two cannot be ranked on this evidence"
        )
    return Comparison(
        metric, best, runner_up, difference, t, df, p, significant, f"{lead}; {verdict}."
    )


def _welch(a: Summary, b: Summary) -> tuple[float | None, float | None, float | None]:
    """t, Welch-Satterthwaite df and two-sided p; None where the test is undefined."""
    if a.sd is None or b.sd is None or (a.sd == 0 and b.sd == 0):
        return None, None, None
    assert a.mean is not None and b.mean is not None  # a summary with an SD has a mean
    va, vb = a.sd**2 / a.n, b.sd**2 / b.n
    t = (a.mean - b.mean) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    return t, df, float(2 * scipy_stats.t.sf(abs(t), df))


def _why_untestable(a: Summary, b: Summary) -> str:
    if a.n < 2 or b.n < 2:
        return "a single seed on one side shows no spread"
    return "both gave the same value on every seed: zero spread, Welch's t is undefined"


def _describe(s: Summary) -> str:
    sd = "SD undefined" if s.sd is None else f"SD {s.sd:.4f}"
    return f"mean {s.mean:.4f}, {sd}, n = {s.n}"


def _p(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}"
