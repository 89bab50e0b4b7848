"""The statistics of a sweep report: confidence intervals of the means, and tests of the
differences between points (scipy.stats).

Runs of one sweep are paired by construction: the same seed gives the same train/validation
split and batch order at every point (and the same initial weights where the architecture is
the same). So a comparison of two points over the seeds both finished is a paired t-test on the
per-seed differences; where fewer than two seeds are shared, Welch's two-sample t-test. The
p-values of the comparisons of one metric are adjusted by Holm–Bonferroni.

"Steps to 97 %" is censored: a seed that never got there has no value, only "more than the run
lasted". Its comparisons are Mann–Whitney U rank tests in which a seed that never reached the
threshold ranks after every seed that did (ties among themselves), and the difference shown is
that of the medians (infinite when a median never reached it).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache


@cache
def _scipy():  # noqa: ANN202 (the module)
    """scipy.stats, imported on first use: a sweep's process imports the report at its start."""
    from scipy import stats

    return stats


@contextmanager
def _quiet() -> Iterator[None]:
    """scipy warns of precision loss for nearly equal values (seeds that agree to the last
    digits); the moments here come from the statistics module, exactly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


LEVEL = 0.95  # of every confidence interval
ALPHA = 0.05  # what "significant" means, after adjustment


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The Student-t confidence interval of the mean of ``values``; NaNs below two values."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    sem = statistics.stdev(values) / math.sqrt(n)
    if sem == 0:
        return mean, mean
    half = float(_scipy().t.ppf(0.5 + level / 2, n - 1)) * sem
    return mean - half, mean + half


@dataclass
class Comparison:
    """One point against the baseline on one metric."""

    test: str  # "paired t (n = 3)", "Welch t", "Mann-Whitney U", or why none ran
    diff: float  # point − baseline: of the means (t-tests) or of the medians (ranks)
    ci: tuple[float, float]  # of the difference (t-tests), NaNs otherwise
    p: float
    effect: float  # Cohen's d_z (paired), Cohen's d with the pooled sd (Welch), NaN (ranks)
    n: tuple[int, int]  # seeds of the point and of the baseline that entered
    statistic: float = math.nan  # t (t-tests) or U (ranks)
    df: float = math.nan  # the t distribution's degrees of freedom (Welch's: fractional)
    p_adj: float = math.nan  # Holm over the metric's comparisons

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_adj) and self.p_adj < ALPHA


def _none(why: str, n: tuple[int, int]) -> Comparison:
    return Comparison(why, math.nan, (math.nan, math.nan), math.nan, math.nan, n)


def compare(
    point: Mapping[int, float], baseline: Mapping[int, float], level: float = LEVEL
) -> Comparison:
    """``point`` against ``baseline``, each a seed → value of the seeds that finished."""
    shared = sorted(set(point) & set(baseline))
    if len(shared) >= 2:
        d = [point[s] - baseline[s] for s in shared]
        n = len(d)
        mean = math.fsum(d) / n
        sd = statistics.stdev(d)
        if sd == 0:  # every seed differs by the same amount: no spread to test against
            p = 1.0 if mean == 0 else 0.0
            return Comparison(f"paired t (n = {n}), no spread", mean, (mean, mean), p,
                              math.copysign(math.inf, mean) if mean else 0.0, (n, n))  # fmt: skip
        with _quiet():
            res = _scipy().ttest_rel([point[s] for s in shared], [baseline[s] for s in shared])
        half = float(_scipy().t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
        return Comparison(f"paired t (n = {n})", mean, (mean - half, mean + half), float(res.pvalue),
                          mean / sd, (n, n), float(res.statistic), n - 1)  # fmt: skip
    a, b = list(point.values()), list(baseline.values())
    if len(a) < 2 or len(b) < 2:
        return _none("too few seeds", (len(a), len(b)))
    return welch(math.fsum(a) / len(a), statistics.stdev(a), len(a),
                 math.fsum(b) / len(b), statistics.stdev(b), len(b), level)  # fmt: skip


def welch(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int,
          level: float = LEVEL) -> Comparison:  # fmt: skip
    """Welch's two-sample t-test of a − b from each sample's mean, sample std and size (all a
    summary.csv keeps of a point)."""
    va, vb = sd_a**2, sd_b**2
    diff = mean_a - mean_b
    se = math.sqrt(va / n_a + vb / n_b)
    if se == 0:
        return _none("no spread", (n_a, n_b))
    df = se**4 / ((va / n_a) ** 2 / (n_a - 1) + (vb / n_b) ** 2 / (n_b - 1))
    with _quiet():
        res = _scipy().ttest_ind_from_stats(mean_a, sd_a, n_a, mean_b, sd_b, n_b, equal_var=False)
    half = float(_scipy().t.ppf(0.5 + level / 2, df)) * se
    pooled = math.sqrt(((n_a - 1) * va + (n_b - 1) * vb) / (n_a + n_b - 2))
    return Comparison("Welch t", diff, (diff - half, diff + half), float(res.pvalue),
                      diff / pooled if pooled else math.nan, (n_a, n_b), float(res.statistic), df)  # fmt: skip


def compare_censored(point: Sequence[float | None], baseline: Sequence[float | None]) -> Comparison:
    """Steps to a threshold: None where a seed never got there (ranks last)."""
    a = [math.inf if v is None else v for v in point]
    b = [math.inf if v is None else v for v in baseline]
    if not a or not b:
        return _none("too few seeds", (len(a), len(b)))
    if all(math.isinf(v) for v in a + b):
        return _none("never reached", (len(a), len(b)))
    diff = _median(a) - _median(b)
    res = _scipy().mannwhitneyu(
        a, b, alternative="two-sided", method="exact" if len(a) + len(b) < 20 else "auto"
    )
    return Comparison("Mann-Whitney U", diff, (math.nan, math.nan), float(res.pvalue), math.nan, (len(a), len(b)),
                      float(res.statistic))  # fmt: skip


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def holm(p: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given; NaNs (no test) stay NaN and do
    not count."""
    tested = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
    m = len(tested)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, (value, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * value))
        out[i] = running
    return out


def seeds_needed(effect: float, power: float, alpha: float = ALPHA, most: int = 1000) -> int | None:
    """The seeds a paired t-test needs to detect a standardised difference ``effect`` (d_z)
    with probability ``power`` at two-sided level ``alpha`` (noncentral t); None beyond
    ``most`` or for no effect."""
    if not math.isfinite(effect) or effect == 0:
        return None
    for n in range(2, most + 1):
        df = n - 1
        crit = _scipy().t.ppf(1 - alpha / 2, df)
        nc = abs(effect) * math.sqrt(n)
        if _scipy().nct.sf(crit, df, nc) + _scipy().nct.cdf(-crit, df, nc) >= power:
            return n
    return None
