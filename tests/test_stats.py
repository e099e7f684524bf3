"""Tests for nasfpn.search.stats: every number checked against a hand computation."""
import math

import numpy as np
import pytest
from scipy import stats as st

from nasfpn.search.stats import (bootstrap_interval, kendall_tau, paired_difference, pooled_seed_std,
                                 resolvable_difference, spearman_rho, spread_in_seed_stds, summary, verdict)

A = {0: 0.30, 1: 0.32, 2: 0.31}
B = {0: 0.28, 1: 0.29, 2: 0.30}          # differences 0.02, 0.03, 0.01: mean 0.02, std 0.01


def test_summary_by_hand():
    s = summary([0.30, 0.32, 0.31])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.31) and s["std"] == pytest.approx(0.01)
    assert (s["min"], s["max"]) == (0.30, 0.32)


def test_summary_of_one_value_has_nan_std_and_empty_is_an_error():
    s = summary([0.3])
    assert s["n"] == 1 and s["mean"] == 0.3 and math.isnan(s["std"])
    with pytest.raises(ValueError):
        summary([])


def test_paired_difference_by_hand():
    d = paired_difference(A, B)
    half = st.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert d["n"] == 3 and d["seeds"] == [0, 1, 2]
    assert d["mean"] == pytest.approx(0.02) and d["std"] == pytest.approx(0.01)
    assert d["low"] == pytest.approx(0.02 - half) and d["high"] == pytest.approx(0.02 + half)
    assert d["confidence"] == 0.95


def test_paired_difference_drops_unpaired_seeds():
    d = paired_difference({**A, 7: 0.99}, {**B, 9: 0.01})
    assert d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(0.02)


def test_paired_difference_with_one_pair_has_no_interval():
    d = paired_difference({0: 0.30, 1: 0.5}, {0: 0.28})
    assert d["n"] == 1 and d["mean"] == pytest.approx(0.02)
    assert math.isnan(d["std"]) and math.isnan(d["low"]) and math.isnan(d["high"])
    with pytest.raises(ValueError):
        paired_difference(A, B, confidence=95)


def test_verdict_beats_and_loses_to():
    a = {0: 0.312, 1: 0.320, 2: 0.334}
    b = {0: 0.300, 1: 0.310, 2: 0.320}   # differences 0.012, 0.010, 0.014
    assert verdict(paired_difference(a, b), "searched", "FPN") == (
        "`searched` beats `FPN`: +0.012 AP (95% interval +0.007 to +0.017, 3 paired seeds).")
    assert verdict(paired_difference(b, a), "FPN", "searched") == (
        "`FPN` loses to `searched`: -0.012 AP (95% interval -0.017 to -0.007, 3 paired seeds).")


def test_verdict_ties_when_interval_includes_zero():
    assert verdict(paired_difference(A, B), "A", "B") == (
        "`A` ties with `B`: +0.020 AP, 95% interval -0.005 to +0.045 includes 0 (3 paired seeds).")


def test_verdict_cannot_decide_below_two_pairs():
    one = verdict(paired_difference({0: 0.3}, {0: 0.2, 1: 0.2}), "A", "B")
    none = verdict(paired_difference({0: 0.3}, {1: 0.2}), "A", "B")
    assert one == "`A` vs `B` cannot be decided: only 1 paired seed, and an interval needs at least 2."
    assert none == "`A` vs `B` cannot be decided: no seed in common, and an interval needs at least 2."


def test_resolvable_difference_by_hand_and_monotone_in_seeds():
    assert resolvable_difference(0.01, 3) == pytest.approx(st.t.ppf(0.975, 2) * math.sqrt(2) * 0.01 / math.sqrt(3))
    assert resolvable_difference(0.01, 3, confidence=0.9) < resolvable_difference(0.01, 3)
    widths = [resolvable_difference(0.01, s) for s in range(2, 11)]
    assert all(w1 > w2 for w1, w2 in zip(widths, widths[1:]))
    assert math.isnan(resolvable_difference(0.01, 1))
    with pytest.raises(ValueError):
        resolvable_difference(-0.01, 3)


def test_kendall_tau_by_hand():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)   # 5 concordant, 1 discordant


def test_spearman_rho_by_hand():
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert spearman_rho([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_rank_correlations_are_nan_when_undefined(recwarn):
    for f in (kendall_tau, spearman_rho):
        assert math.isnan(f([1.0], [2.0]))
        assert math.isnan(f([1, 2, 3], [5, 5, 5]))
        with pytest.raises(ValueError):
            f([1, 2, 3], [1, 2])
    assert not recwarn.list


def test_bootstrap_interval_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    x = np.arange(12, dtype=float)
    y = x + rng.normal(0, 4.0, size=x.size)
    tau = kendall_tau(x, y)
    low, high = bootstrap_interval(x, y, kendall_tau, resamples=500, seed=3)
    assert 0 < low < tau < high < 1
    assert bootstrap_interval(x, y, kendall_tau, resamples=500, seed=3) == (low, high)
    # tau takes few values, so a continuous statistic shows that the seed matters
    gap = lambda a, b: float(np.mean(b - a))
    assert bootstrap_interval(x, y, gap, seed=4) != bootstrap_interval(x, y, gap, seed=5)


def test_bootstrap_interval_skips_nan_resamples():
    # With two necks half the resamples draw one neck twice: tau is nan there and is skipped.
    assert bootstrap_interval([1, 2], [1, 2], kendall_tau, resamples=200) == (1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_interval([1], [1], kendall_tau))
    assert all(math.isnan(v) for v in bootstrap_interval([1, 1], [2, 2], kendall_tau))


def test_pooled_seed_std_by_hand():
    # [1, 2, 3]: squares 2 over 2 df; [4, 6]: squares 2 over 1 df; [7] ignored -> sqrt(4 / 3)
    assert pooled_seed_std([[1, 2, 3], [4, 6], [7]]) == pytest.approx(math.sqrt(4 / 3))
    assert pooled_seed_std([[0.3, 0.32]]) == pytest.approx(np.std([0.3, 0.32], ddof=1))
    assert math.isnan(pooled_seed_std([[1.0], []]))


def test_spread_in_seed_stds():
    assert spread_in_seed_stds([0.30, 0.33, 0.31], 0.01) == pytest.approx(3.0)
    assert math.isnan(spread_in_seed_stds([0.3, 0.4], 0.0))
    assert math.isnan(spread_in_seed_stds([0.3, 0.4], math.nan))
