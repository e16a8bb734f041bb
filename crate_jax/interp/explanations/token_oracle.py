"""The token oracle: the score of the best possible per-token explanation of a neuron.

A token-level explanation ("fires on ' return'") can at best predict each token by that token's
mean activation. The oracle does exactly that, with means from the evaluation text outside the
neuron's records (`activations/token_means`), and is scored like any explanation: the pooled
Pearson r of each split over the same held-out records. So it says how much of a site's score
token identity alone could reach, and what an explainer adds beyond it: a context-sensitive
explainer (an LLM) can exceed it, a token-level one should not except by chance.

(The exact in-sample bound, the correlation ratio of the scored records grouped by token, is of
no use here: most tokens occur once in 20 records, so it is near 1 whatever the neuron does.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from crate_jax.interp.activations.records import NeuronRecord
from crate_jax.interp.explanations.neuron_scoring import PROTOCOL_OF_SPLIT, split_scores
from crate_jax.interp.explanations.splits import held_out_records


class TokenOracle:
    """One site and layer's oracle, read from its `token_means` file."""

    def __init__(self, path: Path):
        with np.load(path) as data:
            self.texts: list[str] = json.loads(str(data["texts"]))
            self.means = data["means"]  # [rows, N]; the last row: every other text
            self.fallback = data["fallback"]  # [N]
            self.column = {int(n): k for k, n in enumerate(data["neuron_index"])}
        self.row = {text: row for row, text in enumerate(self.texts)}

    def predict(self, neuron_index: int, tokens: list[str]) -> list[float]:
        """Each token's mean activation for this neuron (the neuron's mean over all the text
        left, where the text has no token of that row)."""
        column = self.column[neuron_index]
        other = len(self.texts)
        values = self.means[[self.row.get(token, other) for token in tokens], column]
        return np.where(np.isnan(values), self.fallback[column], values).tolist()

    def scores(self, neuron: NeuronRecord, record_protocol: str) -> dict[str, float | None]:
        """`{split: r}` of every split, over the split's held-out records; None where r is
        undefined (a constant prediction or activation)."""
        index = neuron.neuron_id.neuron_index
        result = {}
        for protocol in sorted(set(PROTOCOL_OF_SPLIT.values())):
            groups = held_out_records(neuron, protocol, record_protocol)
            predicted = {name: [self.predict(index, r.tokens) for r in records]
                         for name, records in groups.items()}
            splits = [s for s, p in PROTOCOL_OF_SPLIT.items() if p == protocol]
            result.update(split_scores(groups, predicted, splits))
        return {split: None if math.isnan(r) else r for split, r in result.items()}
