"""Confidence intervals over neurons and seeds, and for differences between variants: the one
bootstrap behind every interval shown (a run's `interp/summary.json` and the study report).

A study's score for one variant and site pools every scored neuron of every seed. Neurons of the
same seed share a trained model, so they are not independent draws; the interval comes from a
two-level bootstrap: resample seeds, then neurons within each resampled seed. With one seed it
is the ordinary bootstrap over neurons. A difference between two variants resamples each
independently (they are separate training runs) and takes percentiles of the difference; a
contrast of several variants (a gain over a control, a difference of gains) does the same for
each of its terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray([math.nan if v is None else v for v in values], np.float64)
    return array[np.isfinite(array)]


def bootstrap_means(groups: Sequence[Sequence[float]], samples: int,
                    rng: np.random.Generator) -> np.ndarray:
    """`samples` bootstrap replicates of the pooled mean: `[samples]`.

    `groups` holds one list of per-neuron scores per seed (NaN and None are dropped). Vectorised:
    every group's resampled sums are drawn for every (replicate, seed slot), then each slot keeps
    the sum of the group its resampled seed names.
    """
    groups = [g for g in (_finite(g) for g in groups) if g.size]
    if not groups:
        return np.full(samples, math.nan)
    chosen = rng.integers(0, len(groups), (samples, len(groups)))      # resampled seeds
    sums = np.stack([g[rng.integers(0, g.size, (samples, len(groups), g.size))].sum(axis=-1)
                     for g in groups])                                  # [G, samples, G]
    sizes = np.asarray([g.size for g in groups])
    picked = np.take_along_axis(sums, chosen[None], axis=0)[0]          # [samples, G]
    return picked.sum(axis=1) / sizes[chosen].sum(axis=1)


def _interval(replicates: np.ndarray) -> tuple[float, float]:
    if np.isnan(replicates).any():
        return math.nan, math.nan
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def pooled_mean_interval(groups: Sequence[Sequence[float]], *, samples: int = 1000,
                         seed: int = 0) -> dict:
    """`{"mean", "ci_low", "ci_high", "n"}` of the pooled finite scores of all groups."""
    finite = [_finite(g) for g in groups]
    n = int(sum(g.size for g in finite))
    mean = float(np.concatenate(finite).mean()) if n else math.nan
    low, high = _interval(bootstrap_means(groups, samples, np.random.default_rng(seed)))
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n}


def difference_interval(groups: Sequence[Sequence[float]],
                        reference: Sequence[Sequence[float]], *, samples: int = 1000,
                        seed: int = 0) -> dict:
    """The pooled mean of `groups` minus that of `reference`, with its bootstrap interval."""
    return contrast_interval([(1, groups), (-1, reference)], samples=samples, seed=seed)


def contrast_interval(terms: Sequence[tuple[int, Sequence[Sequence[float]]]], *,
                      samples: int = 1000, seed: int = 0) -> dict:
    """`sum(sign * pooled mean)` over `terms` (each `(+1 or -1, groups)`), with its interval.

    Each term is resampled on its own, as separate training runs are independent: a gain over
    the untrained control is `[(1, trained), (-1, untrained)]`, and whether ablation A changes
    that gain is `[(1, ablated), (-1, ablated_untrained), (-1, crate), (1, crate_untrained)]`.
    `{"difference", "ci_low", "ci_high"}`."""
    rng = np.random.default_rng(seed)
    replicates = sum(sign * bootstrap_means(groups, samples, rng) for sign, groups in terms)
    value = sum(sign * pooled_mean_interval(groups, samples=1)["mean"] for sign, groups in terms)
    low, high = _interval(replicates)
    return {"difference": value, "ci_low": low, "ci_high": high}
