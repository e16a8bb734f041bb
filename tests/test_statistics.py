"""Confidence intervals of the study report on synthetic cases with a known answer."""

import math

import numpy as np
import pytest

from crate_jax.statistics import contrast_interval, difference_interval, pooled_mean_interval


def test_one_seed_interval_matches_the_normal_theory_width():
    scores = np.random.default_rng(0).normal(0.5, 0.1, 400)
    stats = pooled_mean_interval([scores], samples=2000, seed=1)
    assert stats["mean"] == pytest.approx(scores.mean())
    half_width = (stats["ci_high"] - stats["ci_low"]) / 2
    assert half_width == pytest.approx(1.96 * scores.std() / math.sqrt(400), rel=0.12)
    assert stats["ci_low"] < 0.5 < stats["ci_high"]


def test_difference_recovers_a_known_shift_and_its_width():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.5, 0.1, 400), rng.normal(0.3, 0.1, 400)
    diff = difference_interval([b], [a], samples=2000, seed=3)
    assert diff["difference"] == pytest.approx(b.mean() - a.mean())
    assert diff["ci_low"] < -0.2 < diff["ci_high"]
    expected = 1.96 * math.sqrt(a.var() / 400 + b.var() / 400)
    assert (diff["ci_high"] - diff["ci_low"]) / 2 == pytest.approx(expected, rel=0.12)


def test_seed_variation_widens_the_interval_and_nan_is_dropped():
    rng = np.random.default_rng(4)
    steady = [rng.normal(0.5, 0.05, 200) for _ in range(3)]
    shifting = [rng.normal(centre, 0.05, 200) for centre in (0.3, 0.5, 0.7)]
    narrow = pooled_mean_interval(steady, samples=1000)
    wide = pooled_mean_interval(shifting, samples=1000)
    assert wide["ci_high"] - wide["ci_low"] > 5 * (narrow["ci_high"] - narrow["ci_low"])
    with_nan = pooled_mean_interval([[0.2, math.nan, None, 0.4]], samples=200)
    assert with_nan["n"] == 2 and with_nan["mean"] == pytest.approx(0.3)
    constant = pooled_mean_interval([[0.7] * 5, [0.7] * 3], samples=200)
    assert constant["ci_low"] == pytest.approx(0.7) and constant["ci_high"] == pytest.approx(0.7)
    assert math.isnan(pooled_mean_interval([[math.nan]], samples=10)["ci_low"])


def test_gain_over_the_untrained_control_and_a_difference_of_gains_have_known_answers():
    """Ablation lowers the raw score by 0.1 but raises the gain over its untrained control by
    0.1: the contrast of four independent groups recovers both, with the normal-theory width."""
    rng = np.random.default_rng(5)
    n = 500
    crate, crate_untrained = rng.normal(0.6, 0.1, n), rng.normal(0.3, 0.1, n)
    ablated, ablated_untrained = rng.normal(0.5, 0.1, n), rng.normal(0.1, 0.1, n)
    gain = contrast_interval([(1, [crate]), (-1, [crate_untrained])], samples=2000, seed=6)
    assert gain["difference"] == pytest.approx(crate.mean() - crate_untrained.mean())
    assert gain["ci_low"] < 0.3 < gain["ci_high"]
    raw = difference_interval([ablated], [crate], samples=2000, seed=6)
    assert raw["ci_high"] < 0  # the raw comparison says "lowers"
    gains = contrast_interval([(1, [ablated]), (-1, [ablated_untrained]), (-1, [crate]),
                               (1, [crate_untrained])], samples=2000, seed=6)
    assert gains["difference"] == pytest.approx(
        ablated.mean() - ablated_untrained.mean() - crate.mean() + crate_untrained.mean())
    assert 0 < gains["ci_low"] < 0.1 < gains["ci_high"]  # ... the gain says "raises"
    expected = 1.96 * math.sqrt(sum(g.var() / n for g in (crate, crate_untrained, ablated,
                                                           ablated_untrained)))
    assert (gains["ci_high"] - gains["ci_low"]) / 2 == pytest.approx(expected, rel=0.12)
    same = difference_interval([ablated], [crate], samples=300, seed=9)
    assert same == contrast_interval([(1, [ablated]), (-1, [crate])], samples=300, seed=9)
