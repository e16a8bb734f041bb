"""The study's statistics on synthetic cases with a known answer, and their calibration by
simulation: false detections of a zero difference and coverage of a known one."""

import math

import numpy as np
import pytest

from crate_jax.statistics import (
    detectable_difference,
    holm_adjusted,
    neuron_interval,
    paired_run_gain,
    run_difference,
    run_interval,
    run_mean,
)

# The shape of the study the review simulated: between-seed SD 0.05, neuron SD 0.2, 256 neurons.
SEED_SD, NEURON_SD, NEURONS = 0.05, 0.2, 256
REPLICATES = 400


def _study_run_means(rng: np.random.Generator, centre: float, runs: int) -> list[float]:
    """Per-run means of `runs` simulated training runs of one variant: each run draws its own
    level (between-seed variation), then its neurons scatter around it."""
    levels = rng.normal(centre, SEED_SD, runs)
    return [run_mean(rng.normal(level, NEURON_SD, NEURONS)) for level in levels]


@pytest.mark.parametrize("runs", [3, 5])
def test_a_zero_difference_is_detected_at_most_7_percent_of_the_time(runs):
    rng = np.random.default_rng(20)
    detections = sum(run_difference(_study_run_means(rng, 0.5, runs),
                                    _study_run_means(rng, 0.5, runs))["p_value"] < 0.05
                     for _ in range(REPLICATES))
    assert detections / REPLICATES <= 0.07


@pytest.mark.parametrize("runs", [3, 5])
def test_a_known_difference_is_covered_at_least_93_percent_of_the_time(runs):
    rng = np.random.default_rng(21)
    covered = 0
    for _ in range(REPLICATES):
        result = run_difference(_study_run_means(rng, 0.6, runs), _study_run_means(rng, 0.5, runs))
        covered += result["ci_low"] <= 0.1 <= result["ci_high"]
    assert covered / REPLICATES >= 0.93


def test_the_old_two_level_bootstrap_would_fail_the_same_simulation():
    """The same check on resampling seeds then neurons (the study's previous procedure): its
    false-detection rate is far above 5%, which is why runs are the unit now."""
    rng = np.random.default_rng(22)
    detections = 0
    for _ in range(100):
        sides = []
        for _ in range(2):
            levels = rng.normal(0.5, SEED_SD, 3)
            sides.append([rng.normal(level, NEURON_SD, NEURONS) for level in levels])
        replicates = []
        for side in sides:
            seeds = rng.integers(0, 3, (300, 3))
            means = np.stack([g[rng.integers(0, NEURONS, (300, NEURONS))].mean(axis=1)
                              for g in side], axis=1)
            replicates.append(np.take_along_axis(means, seeds, axis=1).mean(axis=1))
        low, high = np.percentile(replicates[0] - replicates[1], [2.5, 97.5])
        detections += low > 0 or high < 0
    assert detections / 100 > 0.1


def test_run_interval_is_students_t_over_runs():
    values = [0.4, 0.5, 0.6, math.nan, None]
    result = run_interval(values)
    assert result["n"] == 3 and result["mean"] == pytest.approx(0.5)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert result["ci_low"] == pytest.approx(0.5 - half)
    assert result["ci_high"] == pytest.approx(0.5 + half)
    one = run_interval([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])


def test_run_difference_matches_welchs_test_and_refuses_too_few_runs():
    from scipy import stats

    a, b = [0.61, 0.58, 0.66, 0.64, 0.59], [0.50, 0.55, 0.47, 0.52, 0.49]
    result = run_difference(a, b)
    assert result["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert result["p_value"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert result["ci_low"] < result["difference"] < result["ci_high"]
    assert result["n"] == result["n_reference"] == 5
    for few in (run_difference([0.6], b), run_difference([0.5, 0.5], [0.5, 0.5])):
        assert math.isnan(few["p_value"]) and math.isnan(few["ci_low"])


def test_holm_adjusts_step_down_and_keeps_the_order():
    adjusted = holm_adjusted([0.01, 0.04, math.nan, 0.03, 0.002])
    # sorted finite: 0.002 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1), monotone
    assert adjusted[4] == pytest.approx(0.008)
    assert adjusted[0] == pytest.approx(0.03)
    assert adjusted[3] == pytest.approx(0.06)
    assert adjusted[1] == pytest.approx(0.06)
    assert math.isnan(adjusted[2])


def test_paired_gain_is_per_neuron_and_counts_what_it_leaves_out():
    trained = {("1", 0): 0.9, ("1", 1): 0.5, ("1", 2): math.nan, ("1", 3): 0.4}
    control = {("1", 0): 0.4, ("1", 1): 0.3, ("1", 2): 0.1, ("1", 4): 0.2}
    gain = paired_run_gain(trained, control)
    assert gain["gain"] == pytest.approx(((0.9 - 0.4) + (0.5 - 0.3)) / 2)
    assert gain["paired"] == 2 and gain["unpaired"] == 3  # NaN on one side, one id each side


def test_paired_gains_remove_what_neurons_share_between_trained_and_control():
    """A neuron's score before training carries into its trained score; pairing removes that
    shared part, so the gain is known much more precisely than the unpaired difference."""
    rng = np.random.default_rng(7)
    base = rng.normal(0.4, 0.2, 500)
    control = {i: v for i, v in enumerate(base)}
    trained = {i: v + 0.1 + rng.normal(0, 0.02) for i, v in enumerate(base)}
    gain = paired_run_gain(trained, control)
    assert gain["gain"] == pytest.approx(0.1, abs=0.005)


def test_neuron_interval_matches_normal_theory_and_drops_nan():
    scores = np.random.default_rng(0).normal(0.5, 0.1, 400)
    result = neuron_interval(scores, samples=2000, seed=1)
    assert result["mean"] == pytest.approx(scores.mean())
    half_width = (result["ci_high"] - result["ci_low"]) / 2
    assert half_width == pytest.approx(1.96 * scores.std() / math.sqrt(400), rel=0.12)
    with_nan = neuron_interval([0.2, math.nan, None, 0.4], samples=200)
    assert with_nan["n"] == 2 and with_nan["mean"] == pytest.approx(0.3)
    assert math.isnan(neuron_interval([math.nan], samples=10)["ci_low"])


def test_the_detectable_difference_is_detected_with_80_percent_power():
    """Simulated studies whose true difference is the detectable difference (from the
    population's standard error) detect it about 80% of the time at the family's level."""
    rng = np.random.default_rng(23)
    runs, family = 5, 4
    spread = math.sqrt(SEED_SD**2 + NEURON_SD**2 / NEURONS)
    freedom = 2 * runs - 2
    error = spread * math.sqrt(2 / runs)
    from scipy import stats

    half = stats.t.ppf(0.975, freedom) * error
    size = detectable_difference({"ci_low": -half, "ci_high": half, "freedom": freedom}, family)
    detected = sum(run_difference(_study_run_means(rng, 0.5 + size, runs),
                                  _study_run_means(rng, 0.5, runs))["p_value"] < 0.05 / family
                   for _ in range(REPLICATES))
    assert 0.7 <= detected / REPLICATES <= 0.9
    assert detectable_difference({"ci_low": -half, "ci_high": half, "freedom": freedom},
                                 1) < size  # a smaller family resolves more
