"""Every interval and test shown to a user: one run described, and variants compared over runs.

Two questions, two procedures:

- **One run described** (a run's `interp/summary.json`): `neuron_interval`, the ordinary
  bootstrap over that run's neurons. It says how precisely *this* model's mean is known, and
  nothing about another training run of the same variant.
- **Variants compared** (the study report): the training run is the unit of replication. Each
  run gives one number per (site, split) (the mean over its neurons, `run_mean`; a paired gain
  over its untrained control, `paired_run_gain`; or a per-run number such as recovery). A
  variant's interval is Student's t interval over its runs (`run_interval`); a difference
  between two variants is Welch's t interval and test over their runs (`run_difference`); the
  family of differences a study's answer states is controlled by Holm's step-down procedure
  (`holm_adjusted`), which keeps the family-wise error at 5% under any dependence between the
  comparisons (they share CRATE's runs, so they are dependent).

Why these and not others. Resampling neurons (or seeds, then neurons) treats the few runs as if
they were the whole population of runs: with 3 vs 3 seeds and a between-seed SD of 0.05, a
two-level bootstrap's "95%" interval of a zero difference excluded 0 in 19.5% of simulated
studies. An exact permutation test of n vs n runs cannot go below p = 2 / C(2n, n) (0.1 for 3 vs 3,
0.008 for 5 vs 5), too coarse to survive a correction over some 25 comparisons. Pairing by seed
would let runs of two variants share their data order (batches are a function of (seed, step)),
but their parameters share nothing (the architectures differ) and an A/A copy runs under other
seeds, so the unpaired test is used: it is valid whether or not pairing would help. A run's
number averages hundreds of neurons, so it is close to normal, which is what t needs; Welch
does not assume that two variants vary equally between seeds. `tests/test_statistics.py`
checks the false-detection rate and coverage of exactly this procedure by simulation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

LEVEL = 0.95
FAMILY_ERROR = 0.05  # family-wise error rate of the comparisons a study's answer states


def _student_t():
    """scipy's Student t distribution, imported on first use: `scipy.stats` takes most of a
    second to import, which every command that never computes an interval would pay."""
    from scipy import stats

    return stats.t


def _finite(values: Iterable[float | None]) -> np.ndarray:
    array = np.asarray([math.nan if v is None else v for v in values], np.float64)
    return array[np.isfinite(array)]


def run_mean(values: Iterable[float | None]) -> float:
    """One run's number for a site and split: the mean of its finite per-neuron values."""
    finite = _finite(values)
    return float(finite.mean()) if finite.size else math.nan


def paired_run_gain(trained: dict, control: dict) -> dict:
    """One run's gain over its untrained control, neuron by neuron.

    `trained`, `control`: `{neuron id: score}` of the same run and its control (the control
    scores the same neuron ids). Returns `{"gain", "paired", "unpaired"}`: the mean of
    `trained - control` over the neurons finite on both sides, how many those are, and how many
    neurons of either side were left out (missing or not finite on the other)."""
    ids = set(trained) | set(control)
    differences = [trained[i] - control[i] for i in ids
                   if i in trained and i in control and trained[i] is not None
                   and control[i] is not None and math.isfinite(trained[i])
                   and math.isfinite(control[i])]
    return {"gain": float(np.mean(differences)) if differences else math.nan,
            "paired": len(differences), "unpaired": len(ids) - len(differences)}


def run_interval(values: Sequence[float | None]) -> dict:
    """`{"mean", "ci_low", "ci_high", "n"}`: Student's t interval of the mean over runs (one
    value per run; NaN and None dropped). One run has no between-run spread: its interval is NaN."""
    finite = _finite(values)
    n = int(finite.size)
    mean = float(finite.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "ci_low": math.nan, "ci_high": math.nan, "n": n}
    half = _student_t().ppf((1 + LEVEL) / 2, n - 1) * finite.std(ddof=1) / math.sqrt(n)
    return {"mean": mean, "ci_low": float(mean - half), "ci_high": float(mean + half), "n": n}


def run_difference(values: Sequence[float | None], reference: Sequence[float | None]) -> dict:
    """Mean of `values` minus mean of `reference` (one value per run each), with Welch's t
    interval and two-sided p value: `{"difference", "ci_low", "ci_high", "p_value", "freedom",
    "n", "n_reference"}` (`freedom`: Welch-Satterthwaite degrees of freedom). Fewer than two
    runs on a side, or no spread on either, gives NaN interval and p: nothing can be judged."""
    ours, theirs = _finite(values), _finite(reference)
    n, m = int(ours.size), int(theirs.size)
    difference = float(ours.mean() - theirs.mean()) if n and m else math.nan
    result = {"difference": difference, "ci_low": math.nan, "ci_high": math.nan,
              "p_value": math.nan, "freedom": math.nan, "n": n, "n_reference": m}
    if n < 2 or m < 2:
        return result
    a, b = ours.var(ddof=1) / n, theirs.var(ddof=1) / m
    if a + b <= 0:
        return result
    freedom = (a + b) ** 2 / (a**2 / (n - 1) + b**2 / (m - 1))  # Welch-Satterthwaite
    error = math.sqrt(a + b)
    half = _student_t().ppf((1 + LEVEL) / 2, freedom) * error
    p_value = 2 * _student_t().sf(abs(difference) / error, freedom)
    result.update(ci_low=difference - half, ci_high=difference + half, p_value=float(p_value),
                  freedom=freedom)
    return result


def detectable_difference(difference: dict, family: int, power: float = 0.8) -> float:
    """The smallest true difference that `run_difference`'s test detects with `power`, given
    the spread it saw (its interval) and a family of `family` comparisons at Bonferroni's level
    `FAMILY_ERROR / family` (Holm's first step; its later steps are less strict). The normal
    approximation of the power of a t test, with the test's own degrees of freedom: what a study
    of this many runs can see, so that "no detectable change" is read with its resolution."""
    low, high = difference["ci_low"], difference["ci_high"]
    if not (math.isfinite(low) and math.isfinite(high)) or family < 1:
        return math.nan
    freedom = difference["freedom"]
    error = (high - low) / 2 / _student_t().ppf((1 + LEVEL) / 2, freedom)
    alpha = FAMILY_ERROR / family
    t = _student_t()
    return float((t.ppf(1 - alpha / 2, freedom) + t.ppf(power, freedom)) * error)


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values, in the given order (NaN stays NaN and is not counted
    in the family). A comparison is detected at family-wise error `FAMILY_ERROR` when its
    adjusted p is below it."""
    indexed = [(p, i) for i, p in enumerate(p_values) if math.isfinite(p)]
    indexed.sort()
    family = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (family - rank) * p))
        adjusted[i] = running
    return adjusted


def neuron_interval(values: Sequence[float | None], *, samples: int = 1000,
                    seed: int = 0) -> dict:
    """`{"mean", "ci_low", "ci_high", "n"}` over one run's neurons (NaN and None dropped), by the
    percentile bootstrap: describes that run only. Fewer than two values: NaN interval."""
    finite = _finite(values)
    n = int(finite.size)
    mean = float(finite.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "ci_low": math.nan, "ci_high": math.nan, "n": n}
    rng = np.random.default_rng(seed)
    means = finite[rng.integers(0, n, (samples, n))].mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": mean, "ci_low": float(low), "ci_high": float(high), "n": n}
