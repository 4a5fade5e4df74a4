"""pass@k against exact enumeration; the paired bootstrap interval on constructed data."""

from itertools import combinations

import numpy as np
import pytest

from wmss.evaluation.metrics import mean_pass_at_k, paired_bootstrap, pass_at_k


@pytest.mark.parametrize("n,c", [(1, 0), (1, 1), (5, 0), (5, 2), (6, 3), (8, 7), (10, 10)])
def test_pass_at_k_equals_enumeration_of_all_k_subsets(n, c):
    outcomes = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(combinations(outcomes, k))
        exact = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(exact)


def test_pass_at_k_rejects_impossible_inputs():
    with pytest.raises(ValueError, match="at least k=3 samples"):
        pass_at_k(2, 1, 3)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(2, 3, 1)
    assert mean_pass_at_k([0, 2, 4], n=4, k=1) == pytest.approx((0 + 0.5 + 1) / 3)


def test_bootstrap_interval_covers_a_real_gain_and_excludes_zero():
    rng = np.random.default_rng(1)
    baseline = rng.random(400) < 0.5
    model = baseline.copy()
    flip = rng.choice(np.flatnonzero(~baseline), 60, replace=False)  # 60 more problems right, none lost
    model[flip] = True
    delta, low, high = paired_bootstrap(model, baseline, seed=0)
    assert delta == pytest.approx(60 / 400)
    assert 0 < low < delta < high
    # pairing matters: all the variance is in the 60 flips, so the interval is narrow
    assert high - low < 0.08


def test_bootstrap_interval_contains_zero_without_a_difference():
    rng = np.random.default_rng(2)
    a, b = rng.random(200) < 0.5, rng.random(200) < 0.5
    b[:] = np.roll(a, 1)  # same accuracy, different problems
    delta, low, high = paired_bootstrap(a, b, seed=0)
    assert delta == pytest.approx(0.0) and low < 0 < high
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)


def test_bootstrap_needs_paired_scores():
    with pytest.raises(ValueError, match="same problems"):
        paired_bootstrap(np.ones(3), np.ones(4))
