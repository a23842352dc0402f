"""Paired statistics for comparing two evaluations of the same items (the CI gate, jielong/gate.py).

Baseline and candidate answer the same eval items, so a regression shows in the items whose result
changed, not in two independent means: most items are right on both sides and carry no signal.

- mcnemar: a 0/1 metric (accuracy, exact match, a rate): an exact one-sided binomial test on the
  discordant items (right on one side only).
- paired_t: any other per-item number (a reward): a one-sided paired t-test on the differences.
- holm_tarone: which of many such tests fire while the chance of any false alarm stays below alpha.
- mde: the smallest regression a test would catch with the given power.

Each test is one-sided in the direction that is worse: `worse` is the per-item difference signed so
that a positive value is a regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Paired:
    """One paired comparison: the mean difference (current - baseline), a (1 - 2 alpha) interval for
    it, the one-sided p-value of "current is worse", and the smallest p-value the test could give on
    these items at all (Tarone: a test that cannot reach the level need not be counted)."""

    n: int
    diff: float
    low: float
    high: float
    p: float
    min_p: float
    sd: float  # standard deviation of the per-item differences (McNemar: from the discordant count)
    binary: bool  # a 0/1 metric, tested by McNemar


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def mcnemar(base: np.ndarray, cur: np.ndarray, higher_is_better: bool, alpha: float) -> Paired:
    """Exact McNemar test of a 0/1 metric: under "no change", each discordant item is equally likely
    to have gone either way, so the count that got worse is Binomial(discordant, 1/2)."""
    n = len(base)
    up = int(((cur == 1) & (base == 0)).sum())  # items the current side gets and the baseline did not
    down = int(((cur == 0) & (base == 1)).sum())
    worse, better = (down, up) if higher_is_better else (up, down)
    disc = up + down
    p = float(stats.binomtest(worse, disc, 0.5, alternative="greater").pvalue) if disc else 1.0
    diff = (up - down) / n
    # Wald interval of a paired difference of proportions (Agresti): var = (disc/n - diff^2) / n
    sd = math.sqrt(max(disc / n - diff * diff, 0.0))
    z = stats.norm.ppf(1 - alpha)
    return Paired(n, diff, diff - z * sd / math.sqrt(n), diff + z * sd / math.sqrt(n), p, 0.5 ** disc, sd, True)


def paired_t(base: np.ndarray, cur: np.ndarray, higher_is_better: bool, alpha: float) -> Paired:
    """One-sided paired t-test and t-interval of the per-item differences."""
    d = cur - base
    n = len(d)
    diff = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    if sd == 0.0:  # every item moved by the same amount (usually none): no noise to test against
        worse = diff < 0 if higher_is_better else diff > 0
        return Paired(n, diff, diff, diff, 0.0 if worse else 1.0, 0.0 if diff else 1.0, 0.0, False)
    alternative = "less" if higher_is_better else "greater"
    p = float(stats.ttest_rel(cur, base, alternative=alternative).pvalue)
    half = stats.t.ppf(1 - alpha, n - 1) * sd / math.sqrt(n)
    return Paired(n, diff, diff - half, diff + half, p, 0.0, sd, False)


def compare(base: np.ndarray, cur: np.ndarray, higher_is_better: bool, alpha: float) -> Paired:
    """McNemar for a 0/1 metric on both sides, the paired t-test otherwise."""
    base, cur = np.asarray(base, dtype=float), np.asarray(cur, dtype=float)
    test = mcnemar if _is_binary(base) and _is_binary(cur) else paired_t
    return test(base, cur, higher_is_better, alpha)


def holm_tarone(p: list[float], min_p: list[float], alpha: float) -> list[tuple[bool, float]]:
    """(rejected, the level its p-value was held to) for each test, family-wise error at most alpha.

    Holm's step-down procedure, counting only the tests that could reach the level at all (Tarone
    1990; the step-down form of Hommel & Krummenauer 1998): an exact test with few discordant items
    has a smallest possible p-value above alpha / K and cannot fire, so it does not dilute the others.
    Metrics of a model whose items did not change (a stage DVC did not re-run) then cost nothing.
    Written here because scipy and statsmodels offer Holm only over all tests.
    """
    remaining = sorted(range(len(p)), key=lambda i: p[i])
    result = [(False, 0.0)] * len(p)
    while remaining:
        # K: the smallest k such that at most k remaining tests can reach alpha / k
        k = next(k for k in range(1, len(remaining) + 1)
                 if sum(min_p[i] <= alpha / k for i in remaining) <= k)
        level = alpha / k
        first = remaining[0]
        if p[first] > level:
            for i in remaining:
                result[i] = (False, alpha / k)
            break
        result[first] = (True, level)
        remaining = remaining[1:]
    return result


def mde(n: int, sd: float, alpha: float, power: float, binary: bool) -> float:
    """The smallest regression (in the metric's units) a one-sided test at `alpha` detects with
    probability `power` on n items whose per-item differences have standard deviation `sd`.

    Normal approximation; for a 0/1 metric never below the exact floor: a regression of k items that
    all flip the wrong way needs 0.5^k <= alpha."""
    z = stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)
    effect = z * sd / math.sqrt(n) if n else math.inf
    if binary:
        effect = max(effect, math.ceil(math.log(alpha) / math.log(0.5)) / n)
    return effect
