"""Scores of explanations, as OpenAI's automated-interpretability computes them.

The score of an explanation on a set of records is the Pearson correlation between the simulated
and the true activations, pooled over every token of those records (OpenAI's
`correlation_score` / `score_from_simulation`). Predictions that are constant have no correlation:
the score is NaN, counted and left out of averages, as the paper did; so is a split without
records (fewer evaluation sequences than the records it needs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain

import numpy as np

from crate_jax.interp.activations.records import ActivationRecord
from crate_jax.interp.explanations.splits import split_groups


def correlation_score(true_activations: Sequence[Sequence[float]],
                      predicted_activations: Sequence[Sequence[float]]) -> float:
    """Pearson r over all tokens of all records; NaN if either side is constant.

    Both arguments are lists of per-record lists with matching lengths.
    """
    if len(true_activations) != len(predicted_activations):
        raise ValueError(f"{len(true_activations)} true records but "
                         f"{len(predicted_activations)} simulated")
    for index, (true, predicted) in enumerate(zip(true_activations, predicted_activations,
                                                  strict=True)):
        if len(true) != len(predicted):
            raise ValueError(f"record {index}: {len(true)} true activations but "
                             f"{len(predicted)} simulated")
    if not true_activations:  # a split with no records (too few sequences to hold them)
        return math.nan
    # One array of all tokens rather than one per record: fewer numpy calls (a run scores
    # about 14,000 splits).
    true = np.array(list(chain.from_iterable(true_activations)), np.float64)
    predicted = np.array(list(chain.from_iterable(predicted_activations)), np.float64)
    if true.size < 2 or np.ptp(true) == 0 or np.ptp(predicted) == 0:
        return math.nan
    return float(np.corrcoef(true, predicted)[0, 1])


def split_scores(groups: dict[str, list[ActivationRecord]], predicted: dict[str, list],
                 splits: list[str]) -> dict[str, float]:
    """`{split: r}`: each split pools the true and predicted activations of its held-out groups
    (`split_groups`) into one Pearson r (NaN for a constant side)."""
    scores = {}
    for split in splits:
        true = [r.activations for g in split_groups()[split] for r in groups[g]]
        pooled = [p for g in split_groups()[split] for p in predicted[g]]
        scores[split] = correlation_score(true, pooled)
    return scores
