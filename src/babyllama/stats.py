"""How sure is a difference? Paired statistics over seeds, and a paired item bootstrap for BLiMP.

A sweep trains every member once per seed, so a comparison (student vs control, an ablation vs the
default) is a set of paired differences, one per seed. We report their mean, a 95% Student-t interval
over seeds, how many seeds agree with the mean's sign, and, for BLiMP, a second interval from a
paired bootstrap over items: items are resampled within each phenomenon (the macro average stays
defined) and within each seed, both models of a pair see the same resample, and the per-seed macro
differences are averaged across seeds. The t interval measures seed-to-seed variation; the bootstrap
measures how much the finite item set alone could move the figure.

No scipy at run time: the t quantile comes from the closed form of the t CDF for an integer number of
degrees of freedom (Abramowitz & Stegun 26.7.3-4), inverted by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LEVEL = 0.95


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with an integer number of degrees of freedom."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # odd: A = (2/pi) (theta + sin(theta) * (cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ...))
        term, series = c, c if df > 1 else 0.0
        for k in range(3, df - 1, 2):
            term *= c * c * (k - 1) / k
            series += term
        two_sided = 2 / math.pi * (theta + s * series)
    else:  # even: A = sin(theta) * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term, series = 1.0, 1.0
        for k in range(2, df - 1, 2):
            term *= c * c * (k - 1) / k
            series += term
        two_sided = s * series
    return 0.5 + math.copysign(two_sided / 2, t)


def t_quantile(q: float, df: int) -> float:
    """The q-quantile of Student's t (bisection on t_cdf; exact to ~1e-12)."""
    if not 0 < q < 1:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > q:
        lo *= 2
    while t_cdf(hi, df) < q:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """Two-sided interval for the mean, mean ± t(df=n-1) · sd / sqrt(n); None with fewer than two values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return None
    half = t_quantile(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def paired(per_seed: Mapping[Any, float], level: float = LEVEL) -> dict[str, Any]:
    """Summary of per-seed paired differences: mean, t interval, and seeds agreeing with the mean's sign."""
    diffs = [float(v) for v in per_seed.values()]
    mean = float(np.mean(diffs))
    sign = (mean > 0) - (mean < 0)
    interval = t_interval(diffs, level)
    return {
        "per_seed": {str(k): float(v) for k, v in per_seed.items()},
        "mean": mean,
        "ci": list(interval) if interval else None,
        "level": level,
        "n": len(diffs),
        "holds": sum(((d > 0) - (d < 0)) == sign for d in diffs) if sign else 0,
        "p": paired_p_value(diffs),
    }


# -- the BLiMP item bootstrap -----------------------------------------------------------------------------

#: One seed's items: phenomenon -> (correct for model A, correct for model B), same items in the same order.
SeedItems = Mapping[str, tuple[np.ndarray, np.ndarray]]


def macro_difference(seeds: Sequence[SeedItems]) -> float:
    """Mean over seeds of (macro accuracy of A - macro accuracy of B), macro = mean over phenomena."""
    per_seed = [np.mean([np.mean(a.astype(float) - b.astype(float)) for a, b in s.values()]) for s in seeds]
    return float(np.mean(per_seed))


def bootstrap_interval(seeds: Sequence[SeedItems], replicates: int = 2000, level: float = LEVEL,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``macro_difference`` under a paired, phenomenon-stratified item bootstrap.

    Per item the paired difference is -1, 0 or +1, so resampling a phenomenon's n items with
    replacement is a multinomial draw of n over those three outcomes: the same distribution as
    resampling indices, at a cost independent of n.
    """
    rng = np.random.default_rng(seed)
    total = np.zeros(replicates)
    for items in seeds:
        per_seed = np.zeros(replicates)
        for a, b in items.values():
            d = a.astype(int) - b.astype(int)
            n = len(d)
            if n == 0:
                raise ValueError("a phenomenon with no items")
            counts = rng.multinomial(n, [np.mean(d == -1), np.mean(d == 0), np.mean(d == 1)], size=replicates)
            per_seed += (counts[:, 2] - counts[:, 0]) / n
        total += per_seed / len(items)
    total /= len(seeds)
    lo, hi = np.quantile(total, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(lo), float(hi)


# -- one run: paired over items ----------------------------------------------------------------------------


def paired_items(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], replicates: int = 2000,
                 level: float = LEVEL) -> dict[str, Any]:
    """Two models on the same minimal pairs: macro difference A - B (mean over groups), its paired item
    bootstrap interval, the discordant pairs and McNemar's exact two-sided p on them (pooled).

    ``a[g]`` / ``b[g]``: per-item correctness of the group ``g`` (same items, same order)."""
    items = {g: (np.asarray(a[g], dtype=bool), np.asarray(b[g], dtype=bool)) for g in a}
    only_a = int(sum(np.sum(x & ~y) for x, y in items.values()))
    only_b = int(sum(np.sum(~x & y) for x, y in items.values()))
    lo, hi = bootstrap_interval([items], replicates, level)
    return {"mean": macro_difference([items]), "ci": [lo, hi], "level": level, "n": int(sum(len(x) for x, _ in items.values())),
            "only_a": only_a, "only_b": only_b, "mcnemar_p": mcnemar_exact(only_a, only_b)}


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p: the discordant pairs as a fair coin (binomial, p = 1/2)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    log_half = n * math.log(0.5)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half for i in range(k + 1)]
    top = max(terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in terms)
    return min(1.0, 2 * tail)


def paired_values(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict[str, Any] | None:
    """Mean of A - B over paired values (e.g. dev windows) with its t interval; None unless paired and n >= 2."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) != len(y) or len(x) < 2:
        return None
    d = x - y
    interval = t_interval(d, level)
    return {"mean": float(d.mean()), "ci": list(interval) if interval else None, "level": level, "n": int(len(d))}


# -- the sentence --------------------------------------------------------------------------------------


def verdict(a: str, b: str, summary: Mapping[str, Any], unit: str, higher_is_better: bool, digits: int = 3,
            expr: str | None = None) -> str:
    """One sentence about A - B driven by the interval: a win, a loss, or no detectable difference.

    The difference keeps its sign (A - B, as the tables and the forest plot show it), so a reader
    never has to flip a number between the sentence and the table. ``expr`` names the difference as the
    table does (default "A - B")."""
    mean, ci, n, holds = summary["mean"], summary.get("ci"), summary["n"], summary["holds"]
    f = f"{{:+.{digits}f}}"
    better_word = "higher" if higher_is_better else "lower"
    if ci is None:
        return f"{expr or f'{a} - {b}'} = {f.format(mean)} {unit} from one seed; run more seeds for an interval."
    lo, hi = ci
    signed = f"{expr or f'{a} - {b}'} = {f.format(mean)} {unit} [{f.format(lo)}, {f.format(hi)}]"
    if lo <= 0 <= hi:
        return (f"no detectable difference between {a} and {b}: {signed}, the interval spans 0; "
                f"{holds}/{n} seeds share the mean's sign.")
    verb = "beats" if (mean > 0) == higher_is_better else "is WORSE than"
    return f"{a} {verb} {b}: {signed} ({better_word} is better), {holds}/{n} seeds."


# -- many comparisons, and scores at chance ------------------------------------------------------------------


def paired_p_value(diffs: Sequence[float]) -> float | None:
    """Two-sided p of the one-sample t test that the mean paired difference is 0; None below two seeds."""
    x = np.asarray(diffs, dtype=float)
    if len(x) < 2:
        return None
    sd = x.std(ddof=1)
    if sd == 0:
        return 1.0 if x.mean() == 0 else 0.0
    t = abs(float(x.mean())) / (sd / math.sqrt(len(x)))
    return float(min(1.0, 2 * (1 - t_cdf(t, len(x) - 1))))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error over the comparisons that have a p; None stays)."""
    have = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, out, running = len(have), [None] * len(p_values), 0.0
    for rank, (p, i) in enumerate(have):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def chance_band(chance: float, n: int, level: float = LEVEL) -> float:
    """Half-width of the interval a model guessing at ``chance`` lands in on ``n`` items (normal approximation)."""
    z = math.sqrt(2) * _erfinv(level)
    return z * math.sqrt(chance * (1 - chance) / n)


def _erfinv(y: float) -> float:
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid) < y else (lo, mid)
    return (lo + hi) / 2


def at_chance(scores: Sequence[tuple[float, int]], chance: float, level: float = LEVEL) -> bool:
    """True when every (accuracy, items) lies within noise of ``chance``: nothing here tells models apart."""
    return bool(scores) and all(n > 0 and abs(acc - chance) <= chance_band(chance, n, level) for acc, n in scores)
