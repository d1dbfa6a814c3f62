"""Sweep statistics against scipy, a hand-computed example, and a brute-force bootstrap."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from scipy import stats as sps

from babyllama.stats import (
    bootstrap_interval,
    macro_difference,
    paired,
    t_cdf,
    t_interval,
    t_quantile,
    verdict,
)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 29, 30])
def test_t_distribution_matches_scipy(df: int) -> None:
    for t in (-7.5, -2.0, -0.3, 0.0, 0.8, 2.5, 12.0):
        assert t_cdf(t, df) == pytest.approx(sps.t.cdf(t, df), abs=1e-12)
    for q in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(q, df) == pytest.approx(sps.t.ppf(q, df), rel=1e-9)


def test_t_interval_matches_scipy_and_a_hand_computed_example() -> None:
    # By hand: mean 0.112, sd 0.01, n 3: t(0.975, 2) = 4.302653, half-width 4.302653 * 0.01 / sqrt(3) = 0.024842.
    lo, hi = t_interval([0.102, 0.112, 0.122])
    assert (lo, hi) == pytest.approx((0.112 - 0.024842, 0.112 + 0.024842), abs=1e-6)
    rng = np.random.default_rng(3)
    for n in (2, 3, 5, 12):
        x = rng.normal(0.05, 0.02, n)
        ref = sps.t.interval(0.95, n - 1, loc=x.mean(), scale=sps.sem(x))
        assert t_interval(x) == pytest.approx(ref, rel=1e-9)
    assert t_interval([0.3]) is None


def test_paired_summary_counts_seeds_sharing_the_sign() -> None:
    s = paired({1: -0.08, 2: -0.09, 3: 0.01})
    assert s["n"] == 3 and s["holds"] == 2 and s["mean"] == pytest.approx(-0.16 / 3)
    assert s["ci"][0] < s["mean"] < s["ci"][1]


def test_verdict_is_driven_by_the_interval() -> None:
    win = verdict("the student", "the control", {"mean": -0.084, "ci": [-0.10, -0.06], "n": 3, "holds": 3},
                  "nats/token", higher_is_better=False)
    assert win == ("the student beats the control: the student - the control = -0.084 nats/token [-0.100, -0.060] "
                   "(lower is better), 3/3 seeds.")
    loss = verdict("the student", "the control", {"mean": -1.2, "ci": [-2.0, -0.4], "n": 3, "holds": 3},
                   "points", higher_is_better=True, digits=1)
    assert loss == ("the student is WORSE than the control: the student - the control = -1.2 points [-2.0, -0.4] "
                    "(higher is better), 3/3 seeds.")
    tie = verdict("the student", "the control", {"mean": 0.003, "ci": [-0.01, 0.016], "n": 3, "holds": 2},
                  "nats/token", higher_is_better=False)
    assert "no detectable difference" in tie and "spans 0" in tie and "2/3 seeds" in tie
    one = verdict("the student", "the control", {"mean": 0.003, "ci": None, "n": 1, "holds": 1}, "nats/token", False)
    assert "one seed" in one


def _exact_bootstrap(seeds: list[dict[str, tuple[np.ndarray, np.ndarray]]]) -> Counter:
    """Every resample of every phenomenon of every seed, enumerated: the exact bootstrap distribution."""
    dist: Counter = Counter({0.0: 1})
    for items in seeds:
        for a, b in items.values():
            n = len(a)
            group: Counter = Counter()
            for idx in itertools.product(range(n), repeat=n):  # n^n resamples, with their multiplicities
                idx = list(idx)
                group[round(float(np.mean(a[idx].astype(int) - b[idx].astype(int))), 12)] += 1
            weight = 1 / (len(items) * len(seeds))
            combined: Counter = Counter()
            for v, c in dist.items():
                for g, k in group.items():
                    combined[round(v + weight * g, 12)] += c * k
            dist = combined
    return dist


def _quantile(dist: Counter, q: float) -> float:
    total = sum(dist.values())
    acc = 0
    for v in sorted(dist):
        acc += dist[v]
        if acc >= q * total:
            return v
    raise AssertionError


def test_bootstrap_interval_matches_the_brute_force_bootstrap() -> None:
    rng = np.random.default_rng(0)
    seeds = []
    for s in range(2):
        items = {}
        for p, n in (("agreement", 4), ("islands", 5)):
            a = rng.random(n) < 0.7 + 0.1 * s
            b = rng.random(n) < 0.5
            items[p] = (a, b)
        seeds.append(items)
    exact = _exact_bootstrap(seeds)
    lo, hi = bootstrap_interval(seeds, replicates=200_000, seed=1)
    assert lo == pytest.approx(_quantile(exact, 0.025), abs=1e-9)
    assert hi == pytest.approx(_quantile(exact, 0.975), abs=1e-9)
    mean = sum(v * c for v, c in exact.items()) / sum(exact.values())
    assert mean == pytest.approx(macro_difference(seeds))  # the bootstrap is centred on the observed difference


def test_mcnemar_exact_matches_the_binomial_test() -> None:
    from scipy.stats import binomtest

    from babyllama.stats import mcnemar_exact

    for a, b in ((3, 10), (213, 213), (200, 226), (50, 5), (0, 4)):
        assert mcnemar_exact(a, b) == pytest.approx(binomtest(a, a + b, 0.5).pvalue, rel=1e-9)
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_items_counts_discordant_pairs_and_brackets_the_difference() -> None:
    from babyllama.stats import paired_items

    rng = np.random.default_rng(3)
    a = {g: rng.random(300) < 0.7 for g in ("x", "y")}
    b = {g: v.copy() for g, v in a.items()}
    b["x"][:30] = ~b["x"][:30]
    out = paired_items(a, b)
    assert out["only_a"] + out["only_b"] == 30 and out["n"] == 600
    assert out["ci"][0] <= out["mean"] <= out["ci"][1]
    assert out["mean"] == pytest.approx((np.mean(a["x"]) - np.mean(b["x"])) / 2)


def test_holm_adjusts_every_comparison_and_keeps_order():
    from babyllama.stats import holm

    adjusted = holm([0.01, 0.04, 0.03, None, 0.5])
    assert adjusted[3] is None
    assert adjusted[:3] == pytest.approx([0.04, 0.09, 0.09]) and adjusted[4] == pytest.approx(0.5)
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])  # never below the smaller one's, capped at 1


def test_paired_p_value_is_the_t_test():
    from babyllama.stats import paired_p_value

    assert paired_p_value([1.0]) is None
    assert paired_p_value([1.0, 2.0, 3.0]) == pytest.approx(0.0742, abs=1e-4)  # t = 3.46 on 2 df
    assert paired_p_value([0.0, 0.0]) == 1.0 and paired_p_value([0.5, 0.5]) == 0.0


def test_at_chance_uses_the_noise_of_the_item_count():
    from babyllama.stats import at_chance, chance_band

    assert chance_band(0.5, 100) == pytest.approx(1.96 * 0.05, rel=1e-3)
    assert at_chance([(0.52, 100), (0.45, 100)], 0.5)  # both within ±9.8 points
    assert not at_chance([(0.52, 100), (0.62, 100)], 0.5)  # one model is clearly above chance
    assert not at_chance([(0.52, 10_000)], 0.5)  # 2 points is far outside ±1 point on 10k items
    assert not at_chance([], 0.5)
