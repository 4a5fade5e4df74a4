"""Eq. 9 and its variants against hand-computed values, degenerate cases, sampling and de-duplication."""

import numpy as np
import pytest

from wmss.config import RunConfig
from wmss.errors import WmssError
from wmss.selection import sample_active_set, select, selection_weights

H_WEAK = np.array([1.0, 2.0, 0.5, 1.5])
H_STRONG = np.array([0.5, 2.5, 0.5, 0.0])
# ΔH = [-0.5, 0.5, 0, -1.5]; [-ΔH]_+ = [0.5, 0, 0, 1.5]; [ΔH]_+ = [0, 0.5, 0, 0]


def test_paper_form_by_hand():
    p, mass, notes = selection_weights(H_WEAK, H_STRONG, 0.1, 0.8, 0.1, "paper")
    raw = np.array([0.1 * 0.5 + 0.8 * 0.5, 0.8 * 2.5 + 0.1 * 0.5, 0.8 * 0.5, 0.1 * 1.5])  # 0.45 2.05 0.4 0.15
    np.testing.assert_allclose(p, raw / 3.05)
    np.testing.assert_allclose(
        [mass["alpha"], mass["beta"], mass["gamma"]], [0.2 / 3.05, 2.8 / 3.05, 0.05 / 3.05]
    )
    assert notes == []


def test_normalized_form_by_hand():
    p, _, _ = selection_weights(H_WEAK, H_STRONG, 0.1, 0.8, 0.1, "normalized")
    expected = (
        0.1 * np.array([0.25, 0, 0, 0.75]) + 0.8 * np.array([1, 5, 1, 0]) / 7 + 0.1 * np.array([0, 1, 0, 0])
    )
    np.testing.assert_allclose(p, expected)  # the three normalised terms already sum to α+β+γ = 1


def test_released_code_form_by_hand():
    p, _, _ = selection_weights(H_WEAK, H_STRONG, 0.1, 0.8, 0.1, "released_code")
    # α·H_w/ΣH_w + β·[−ΔH]_+/Σ + γ·[ΔH]_+/Σ
    np.testing.assert_allclose(p, [0.22, 0.14, 0.01, 0.63])


def test_released_code_keeps_duplicates_by_default():
    cfg = RunConfig()
    assert cfg.dedup is True
    cfg.wmss.selection = "released_code"
    assert cfg.dedup is False
    cfg.wmss.dedup = True
    assert cfg.dedup is True


def test_nan_entropy_gets_zero_weight():
    h_weak = np.array([1.0, np.nan, 0.5])
    h_strong = np.array([0.5, 0.7, np.nan])
    p, _, notes = selection_weights(h_weak, h_strong, 0.1, 0.8, 0.1)
    assert p[1] == 0 and p[2] == 0 and p[0] == pytest.approx(1.0)
    assert any("2 example(s)" in n for n in notes)


def test_all_zero_weights_fall_back_to_uniform_over_valid():
    h = np.array([0.0, 0.0, np.nan, 0.0])
    p, _, notes = selection_weights(h, h, 0.1, 0.8, 0.1)
    np.testing.assert_allclose(p, [1 / 3, 1 / 3, 0, 1 / 3])
    assert any("uniform" in n for n in notes)


def test_term_with_zero_sum_contributes_nothing():
    h_weak = np.array([1.0, 2.0, 3.0])
    p, mass, notes = selection_weights(h_weak, h_weak.copy(), 0.1, 0.8, 0.1, "normalized")  # ΔH = 0
    np.testing.assert_allclose(p, h_weak / h_weak.sum())
    assert mass["alpha"] == 0 and mass["gamma"] == 0
    assert sum("sums to 0" in n for n in notes) == 2


def test_no_valid_entropy_is_an_error():
    with pytest.raises(WmssError, match="no example has a finite entropy"):
        selection_weights(np.array([np.nan]), np.array([np.nan]))


@pytest.mark.parametrize("coefficients,match", [((0, 0, 0), "all 0"), ((-0.1, 0.8, 0.1), ">= 0")])
def test_bad_coefficients(coefficients, match):
    with pytest.raises(WmssError, match=match):
        selection_weights(H_WEAK, H_STRONG, *coefficients)


def test_sampling_is_seeded_and_respects_zero_weights():
    weights = np.array([0.5, 0.0, 0.25, 0.25])
    a, b = sample_active_set(weights, seed=7), sample_active_set(weights, seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == 4 and a[1] == 0
    assert sample_active_set(weights, seed=7, sample_multiplier=2.5).sum() == 10


def test_dedup_and_duplicates():
    rng = np.random.default_rng(0)
    h_weak, h_strong = rng.uniform(0, 2, 200), rng.uniform(0, 2, 200)
    kept = select(h_weak, h_strong, alpha=0.1, beta=0.8, gamma=0.1, form="paper", dedup=True, seed=3)
    dup = select(h_weak, h_strong, alpha=0.1, beta=0.8, gamma=0.1, form="paper", dedup=False, seed=3)
    np.testing.assert_array_equal(kept.draws, dup.draws)
    assert kept.draws.sum() == 200 and len(dup.active_rows) == 200
    assert len(kept.active_rows) == len(set(kept.active_rows)) == int((kept.draws > 0).sum())
    # drawing n times from n items leaves about 1 - 1/e distinct (63%) under near-uniform weights
    assert 0.5 < kept.active_fraction < 0.75
    assert sorted(set(dup.active_rows)) == kept.active_rows
