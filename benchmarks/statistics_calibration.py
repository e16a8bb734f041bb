"""How often the study's comparison of two variants is wrong, by simulation: the run-level test
the report uses (`crate_jax.statistics.run_difference`, Welch's t over runs) against the
seed-then-neuron bootstrap the project used before (kept here only as the baseline).

Each simulated study draws, per variant, `runs` training runs whose levels scatter around the
variant's mean with the between-run SD, then `neurons` neuron scores per run around that level.
It reports, over `replicates` studies, the false-detection rate of a zero difference and the
coverage of a known one (the README quotes the default shape, the review's).

    python benchmarks/statistics_calibration.py --runs=3,5 --replicates=400
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

from crate_jax.statistics import run_difference, run_mean

flags.DEFINE_string("runs", "3,5", "Runs per variant, comma-separated: one row each.")
flags.DEFINE_integer("replicates", 400, "Simulated studies per row and question.")
flags.DEFINE_float("seed_sd", 0.05, "Between-run SD of a variant's mean score.")
flags.DEFINE_float("neuron_sd", 0.2, "SD of neuron scores within a run.")
flags.DEFINE_integer("neurons", 256, "Neurons scored per run.")
flags.DEFINE_float("difference", 0.1, "The true difference whose coverage is measured.")
flags.DEFINE_integer("bootstrap_samples", 1000, "Replicates of the baseline bootstrap.")
flags.DEFINE_integer("seed", 1, "Seed of each row's simulation.")
FLAGS = flags.FLAGS


def _variant(rng: np.random.Generator, centre: float, runs: int) -> list[np.ndarray]:
    """`runs` runs of one variant: per run, its neurons' scores."""
    levels = rng.normal(centre, FLAGS.seed_sd, runs)
    return [rng.normal(level, FLAGS.neuron_sd, FLAGS.neurons) for level in levels]


def _bootstrap_interval(rng: np.random.Generator, ours: list[np.ndarray],
                        theirs: list[np.ndarray]) -> tuple[float, float]:
    """The baseline: resample runs, then neurons within each, for each side; percentiles of the
    difference of pooled means."""
    samples = FLAGS.bootstrap_samples
    replicates = []
    for side in (ours, theirs):
        chosen = rng.integers(0, len(side), (samples, len(side)))
        means = np.stack([run[rng.integers(0, run.size, (samples, run.size))].mean(axis=1)
                          for run in side], axis=1)  # [samples, runs]
        replicates.append(np.take_along_axis(means, chosen, axis=1).mean(axis=1))
    low, high = np.percentile(replicates[0] - replicates[1], [2.5, 97.5])
    return float(low), float(high)


def _welch(ours: list[np.ndarray], theirs: list[np.ndarray]) -> dict:
    return run_difference([run_mean(run) for run in ours], [run_mean(run) for run in theirs])


def calibrate(runs: int, rng: np.random.Generator) -> dict[str, float]:
    """`{"false_old", "false_new", "coverage_old", "coverage_new"}` for `runs` runs a side."""
    counts = dict.fromkeys(("false_old", "false_new", "coverage_old", "coverage_new"), 0)
    shift = FLAGS.difference
    for _ in range(FLAGS.replicates):
        ours, theirs = _variant(rng, 0.5, runs), _variant(rng, 0.5, runs)
        low, high = _bootstrap_interval(rng, ours, theirs)
        counts["false_old"] += low > 0 or high < 0
        counts["false_new"] += _welch(ours, theirs)["p_value"] < 0.05
        ours, theirs = _variant(rng, 0.5 + shift, runs), _variant(rng, 0.5, runs)
        low, high = _bootstrap_interval(rng, ours, theirs)
        counts["coverage_old"] += low <= shift <= high
        result = _welch(ours, theirs)
        counts["coverage_new"] += result["ci_low"] <= shift <= result["ci_high"]
    return {key: count / FLAGS.replicates for key, count in counts.items()}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    print(f"between-run SD {FLAGS.seed_sd}, neuron SD {FLAGS.neuron_sd}, {FLAGS.neurons} "
          f"neurons, {FLAGS.replicates} studies per cell, seed {FLAGS.seed}\n")
    print("| runs a side | false detections: bootstrap | Welch over runs | coverage of "
          f"{FLAGS.difference}: bootstrap | Welch over runs |")
    print("|---|---|---|---|---|")
    for runs in (int(r) for r in FLAGS.runs.split(",")):
        rates = calibrate(runs, np.random.default_rng(FLAGS.seed))  # each row on its own
        print(f"| {runs} | {rates['false_old']:.1%} | {rates['false_new']:.1%} | "
              f"{rates['coverage_old']:.1%} | {rates['coverage_new']:.1%} |", flush=True)


if __name__ == "__main__":
    app.run(main)
