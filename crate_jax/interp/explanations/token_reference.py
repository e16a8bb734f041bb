"""The token reference: a context-free per-token prediction of a neuron, scored like an explanation.

A token-level explanation ("fires on ' return'") predicts each token the same wherever it
occurs. The token reference predicts each held-out token by the neuron's mean activation on that
token in the evaluation text outside the neuron's records (`activations/token_means`), and is
scored like any explanation: the pooled Pearson r of each split over the same held-out records.
It says how much of a site's score a fixed token-to-activation map fitted on ordinary text
reaches, and what an explainer adds beyond it.

It is a reference, not a bound on what a per-token explanation can score: its means are fitted
on text outside the records, mostly low activations, while the scored top records are chosen
for high ones; so an explanation that is also a per-token map can beat it (the report counts how
often). (The in-sample bound, the correlation ratio of the scored records grouped by token, is
of no use either: most tokens occur once in 20 records, so it is near 1 whatever the neuron
does.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from crate_jax.interp.activations.records import NeuronRecord
from crate_jax.interp.explanations.scoring import split_scores
from crate_jax.interp.explanations.splits import (
    PROTOCOL_OF_SPLIT,
    held_out_records,
    protocol_splits,
)


class TokenReference:
    """One site and layer's token reference, read from its `token_means` file.

    Records show decoded texts, so ids that decode to the same text are merged (sums and counts
    added). A text outside the table, or whose count is 0 once the neuron's own records are left
    out, is predicted by the neuron's mean over every estimation token (the "other" row
    included).
    """

    def __init__(self, path: Path, decode: Callable[[int], str]):
        with np.load(path) as data:
            token_ids = data["token_ids"]  # [M]
            sums, counts = data["sums"], data["counts"]  # [M + 1, N]; last row: other ids
            self.column = {int(n): k for k, n in enumerate(data["neuron_index"])}
        texts = [decode(int(token)) for token in token_ids]
        self.texts = sorted(set(texts))
        self.row = {text: row for row, text in enumerate(self.texts)}
        rows = np.asarray([self.row[text] for text in texts], np.int64)
        merged_sums = np.zeros((len(self.texts), sums.shape[1]), np.float64)
        merged_counts = np.zeros((len(self.texts), sums.shape[1]), np.int64)
        np.add.at(merged_sums, rows, sums[:-1])
        np.add.at(merged_counts, rows, counts[:-1])
        with np.errstate(invalid="ignore", divide="ignore"):
            self.fallback = sums.sum(axis=0) / counts.sum(axis=0)  # [N]
            self.means = np.where(merged_counts > 0, merged_sums / merged_counts,
                                  self.fallback[None, :])  # [texts, N]

    def predict(self, neuron_index: int, tokens: list[str]) -> list[float]:
        """Each token text's mean activation for this neuron (see the class)."""
        return self._predictor(neuron_index)(tokens)

    def _predictor(self, neuron_index: int) -> Callable[[list[str]], list[float]]:
        """`predict` for one neuron, its column read once as Python floats (the fallback
        last), so each token is one lookup: a neuron's records are predicted by one."""
        column = self.column[neuron_index]
        values = [*self.means[:, column].tolist(), float(self.fallback[column])]
        row, other = self.row.get, len(self.texts)
        return lambda tokens: [values[row(token, other)] for token in tokens]

    def scores(self, neuron: NeuronRecord, record_protocol: str) -> dict[str, float | None]:
        """`{split: r}` of every split of `PROTOCOL_OF_SPLIT`, over the split's held-out records
        (`interp.protocol` = `record_protocol`); None where r is undefined (a constant
        prediction or activation)."""
        predict = self._predictor(neuron.neuron_id.neuron_index)
        result = {}
        for protocol in sorted(set(PROTOCOL_OF_SPLIT.values())):
            groups = held_out_records(neuron, protocol, record_protocol)
            predicted = {name: [predict(r.tokens) for r in records]
                         for name, records in groups.items()}
            result.update(split_scores(groups, predicted, protocol_splits(protocol)))
        return {split: None if math.isnan(r) else r for split, r in result.items()}
