"""Training batches: random windows of a token array, drawn from a counter-based seeded stream.

The windows of step `s` depend only on `(seed, s)`, so the sampler's whole state is the step
number: a resumed run draws exactly the batches an uninterrupted run would have, and every host of
a multi-host job computes the same global batch and keeps its own slice of it.
"""

from __future__ import annotations

import numpy as np


class WindowSampler:
    """Windows of `seq_len + 1` tokens (inputs and their next-token targets)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        if tokens.size < seq_len + 1:
            raise ValueError(f"{tokens.size} tokens are fewer than one window of seq_len + 1 = "
                             f"{seq_len + 1}; lower train.seq_len or add text")
        if global_batch % process_count:
            raise ValueError(f"train.batch_size={global_batch} is not divisible by the "
                             f"{process_count} processes")
        self.tokens = tokens
        self.seq_len = seq_len
        self.global_batch = global_batch
        self.seed = seed
        self.local_batch = global_batch // process_count
        self.process_index = process_index

    def window_starts(self, step: int) -> np.ndarray:
        """Start offsets of the whole global batch of `step`: `[global_batch]`."""
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, self.tokens.size - self.seq_len, size=self.global_batch)

    def batch(self, step: int) -> np.ndarray:
        """This process's rows of the global batch of `step`: `[local_batch, seq_len + 1]` int32."""
        first = self.process_index * self.local_batch
        starts = self.window_starts(step)[first:first + self.local_batch]
        return np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts]).astype(np.int32)


def evaluation_windows(tokens: np.ndarray, seq_len: int, max_windows: int) -> np.ndarray:
    """Consecutive, non-overlapping windows from the start of `tokens`: the same every eval.

    Returns `[windows, seq_len + 1]` int32 with `windows <= max_windows`.
    """
    count = min(max_windows, (tokens.size - 1) // seq_len)
    if count < 1:
        raise ValueError(f"the validation split has {tokens.size} tokens, fewer than one window "
                         f"of {seq_len + 1}; lower train.seq_len or raise data.val_fraction")
    return np.stack([tokens[i * seq_len:i * seq_len + seq_len + 1]
                     for i in range(count)]).astype(np.int32)
