"""Per-token mean activations of the sampled neurons, for the token oracle (`token_oracle`).

The oracle asks how well the best per-token explanation could score: predict every held-out
token by its mean activation. That mean must come from text the scored records do not contain,
or the oracle would be fitted to the very activations it predicts. The capture pass already
streams every evaluation token through the model, so `TokenMeans` keeps running sums there;
`finish` then removes, per neuron, every position that any of that neuron's records shows (top,
random and quantile-bin records, each position once: `RecordMiner.covered_positions`), so the
means come from the rest of the evaluation text only.

Tokens are keyed by their decoded text, as records and explanations show them (ids that decode
to the same text are one token here). The table keeps the most frequent texts of the evaluation
text, at most `interp.oracle_table_entries // neurons` of them; the others share one "other"
row. Memory: `8 * rows * neurons` bytes per site and layer.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from crate_jax.atomic_files import atomic_path


def texts_by_frequency(sequences: np.ndarray, decode: Callable[[int], str]) -> list[str]:
    """The token texts of the evaluation `sequences` `[S, T]`, most frequent first (ties by
    text): a table of R rows keeps the first R."""
    ids, counts = np.unique(sequences, return_counts=True)
    frequency: Counter = Counter()
    for token, count in zip(ids.tolist(), counts.tolist(), strict=True):
        frequency[decode(token)] += count
    return [text for text, _ in sorted(frequency.items(), key=lambda item: (-item[1], item[0]))]


class TokenMeans:
    """Running per-text sums of one site and layer's sampled neurons over the evaluation text.

    Each token id has a row: its text's, where `texts` (the kept ones) has it, or the "other"
    row (`len(texts)`).
    """

    def __init__(self, texts: list[str], sequences: np.ndarray, decode: Callable[[int], str],
                 num_neurons: int):
        self.texts = texts
        index = {text: row for row, text in enumerate(texts)}
        # Only ids of the evaluation `sequences` are ever looked up (or decodable: a model's
        # vocabulary may be padded past its tokenizer's).
        present = np.unique(sequences)
        self.rows_of_ids = np.full(int(present.max()) + 1, len(texts), np.int64)  # [max id + 1]
        self.rows_of_ids[present] = [index.get(decode(int(token)), len(texts))
                                     for token in present]
        self.sums = np.zeros((len(texts) + 1, num_neurons), np.float64)  # [rows, N]
        self.counts = np.zeros(len(texts) + 1, np.int64)  # [rows], the same for every neuron

    def observe(self, tokens: np.ndarray, activations: np.ndarray) -> None:
        """Adds one batch: `tokens` `[B, T]`, `activations` `[B, T, N]` of the sampled neurons."""
        rows = self.rows_of_ids[np.asarray(tokens).ravel()]
        values = np.asarray(activations, np.float64).reshape(rows.size, -1)
        order = np.argsort(rows, kind="stable")
        present, starts = np.unique(rows[order], return_index=True)
        self.sums[present] += np.add.reduceat(values[order], starts, axis=0)
        self.counts += np.bincount(rows, minlength=self.counts.size)

    def finish(self, covered: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        """Per-neuron means without the positions of its records: `covered[n]` is
        `(token ids [P], activations [P])` of neuron n's record positions, each once.

        Returns `means` `[rows, N]` (float32; NaN where no token of that row is left) and
        `fallback` `[N]`, the neuron's mean over every token left: what a text never seen outside
        the records is predicted to be."""
        means = np.full(self.sums.shape, np.nan, np.float32)
        fallback = np.full(self.sums.shape[1], np.nan, np.float32)
        for neuron, (tokens, values) in enumerate(covered):
            rows = self.rows_of_ids[np.asarray(tokens, np.int64)]
            sums = self.sums[:, neuron] - np.bincount(rows, weights=np.asarray(values, np.float64),
                                                      minlength=self.counts.size)
            counts = self.counts - np.bincount(rows, minlength=self.counts.size)
            seen = counts > 0
            means[seen, neuron] = sums[seen] / counts[seen]
            if counts.sum():
                fallback[neuron] = sums.sum() / counts.sum()
        return {"means": means, "fallback": fallback}

    def write(self, path: Path, neuron_index: np.ndarray,
              covered: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """`finish`, saved beside the records (atomically) for the scoring step."""
        with atomic_path(path) as temporary, open(temporary, "wb") as file:
            # Texts as JSON: a NumPy string array would drop a token's trailing NUL characters.
            np.savez_compressed(file, neuron_index=np.asarray(neuron_index),
                                texts=np.asarray(json.dumps(self.texts)), **self.finish(covered))
