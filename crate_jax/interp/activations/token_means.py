"""Per-token activation sums of the sampled neurons, for the token reference (`token_reference`).

The token reference predicts every held-out token by the neuron's mean activation on that token.
That mean must come from text the scored records do not contain, or the reference would be
fitted to the very activations it predicts. The capture pass already
streams every evaluation token through the model, so `TokenMeans` keeps running sums there;
`finish` then removes, per neuron, every position that any of that neuron's records shows (top,
random and quantile-bin records, each position once: `RecordMiner.covered_positions`), so the
sums come from the rest of the evaluation text only.

The table keeps the `interp.token_table_entries // neurons` most frequent token ids of the
evaluation text (`frequent_token_ids`); every other id shares one "other" row, the last.
Memory: `16 * rows * neurons` bytes per site and layer once finished. Ids are kept as ids here;
the token reference merges those that decode to the same text, since records show texts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crate_jax.atomic_files import atomic_path


def frequent_token_ids(sequences: np.ndarray, rows: int) -> np.ndarray:
    """The (at most) `rows` most frequent token ids of the evaluation `sequences` `[S, T]`,
    most frequent first, ties by id: the ids a table of `rows` rows keeps."""
    counts = np.bincount(np.asarray(sequences, np.int64).ravel())
    order = np.argsort(-counts, kind="stable")  # ties keep id order
    return order[:rows][counts[order[:rows]] > 0]


class TokenMeans:
    """Running per-token sums of one site and layer's sampled neurons over the evaluation text.

    Row k holds `token_ids[k]`; the last row (`len(token_ids)`) every other id. Counts are
    shared by every neuron while streaming (each token is seen by all of them) and become
    per-neuron only when `finish` removes each neuron's own record positions.
    """

    def __init__(self, token_ids: np.ndarray, num_neurons: int):
        self.token_ids = np.asarray(token_ids, np.int64)  # [M]
        other = self.token_ids.size
        self._rows_of_ids = np.full(int(self.token_ids.max(initial=-1)) + 2, other, np.int64)
        self._rows_of_ids[self.token_ids] = np.arange(other)
        self.sums = np.zeros((other + 1, num_neurons), np.float64)  # [M + 1, N]
        self.counts = np.zeros(other + 1, np.int64)  # [M + 1]

    def rows(self, tokens: np.ndarray) -> np.ndarray:
        """The table row of each token id (any shape); ids above every kept one are "other"."""
        tokens = np.asarray(tokens, np.int64)
        last = self._rows_of_ids.size - 1  # always an "other" entry
        return self._rows_of_ids[np.minimum(tokens, last)]

    def observe(self, tokens: np.ndarray, activations: np.ndarray) -> None:
        """Adds one batch: `tokens` `[B, T]`, `activations` `[B, T, N]` of the sampled neurons."""
        rows = self.rows(tokens).ravel()
        values = np.asarray(activations, np.float64).reshape(rows.size, -1)
        order = np.argsort(rows, kind="stable")
        present, starts = np.unique(rows[order], return_index=True)
        self.sums[present] += np.add.reduceat(values[order], starts, axis=0)
        self.counts += np.bincount(rows, minlength=self.counts.size)

    def finish(self, covered: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        """Per-neuron sums and counts without the positions of its records: `covered[n]` is
        `(token ids [P], activations [P])` of neuron n's record positions, each once.

        Returns `sums` `[M + 1, N]` (float64) and `counts` `[M + 1, N]` (int64)."""
        sums = self.sums.copy()
        counts = np.repeat(self.counts[:, None], sums.shape[1], axis=1)
        for neuron, (tokens, values) in enumerate(covered):
            rows = self.rows(tokens)
            sums[:, neuron] -= np.bincount(rows, weights=np.asarray(values, np.float64),
                                           minlength=sums.shape[0])
            counts[:, neuron] -= np.bincount(rows, minlength=sums.shape[0])
        return {"sums": sums, "counts": counts}

    def write(self, path: Path, neuron_index: np.ndarray,
              covered: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """`finish`, saved beside the records (atomically) for the scoring step:
        `neuron_index` `[N]`, `token_ids` `[M]`, `sums` and `counts` `[M + 1, N]`."""
        with atomic_path(path) as temporary, open(temporary, "wb") as file:
            np.savez_compressed(file, neuron_index=np.asarray(neuron_index),
                                token_ids=self.token_ids, **self.finish(covered))
