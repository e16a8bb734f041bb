"""A fixed-size, per-neuron pool of the best candidate records seen so far in a stream.

Used by the record miner for top-activating records (ranked by max activation) and for the
Anthropic-style bin samples (ranked by a random priority): the same vectorised merge serves both.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def window_starts(centres: np.ndarray, seq_len: int, window: int) -> np.ndarray:
    """First position of the window around each centre: `c - window // 2`, shifted into range."""
    return np.clip(centres - window // 2, 0, max(seq_len - window, 0))


def gather_windows(activations: np.ndarray, tokens: np.ndarray, rows: np.ndarray,
                    centres: np.ndarray, neurons: np.ndarray | None,
                    window: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of `activations` `[B, T, N]` and `tokens` `[B, T]` for M (row, centre) pairs.

    Returns activations `[M, width]` of the given `neurons` `[M]` (or `[M, width, N]` of all
    neurons when `neurons` is None) and token ids `[M, width]`, `width = min(window, T)`.
    Indexing a sliding-window view copies whole windows: ~6x faster than per-element indices.
    """
    seq_len = tokens.shape[1]
    width = min(window, seq_len)
    starts = window_starts(centres, seq_len, window)
    window_tokens = sliding_window_view(tokens, width, axis=1)[rows, starts]
    view = sliding_window_view(activations, width, axis=1)  # [B, T - width + 1, N, width]
    if neurons is None:
        return view[rows, starts].transpose(0, 2, 1), window_tokens
    return view[rows, starts, neurons], window_tokens


class RecordPool:
    """Per column, the `capacity` candidates that come first in (key, sequence index) order.

    Columns are `[N]` (top records) or `[bins, N]` (quantile samples); the last column axis is
    always the neuron. A candidate is a sequence; its key is `-max` (top records) or a random
    priority (samples), infinite for no candidate (empty place, or a sequence outside the bin).
    `key`, `sequence` (-1 when empty), `centre` are `[capacity, *columns]`, sorted best first.

    Windows (`[capacity, *columns, width]`) are never moved: `slot[rank, *column]` says where
    rank's window lies, and a newcomer takes the slot of the candidate it evicts. So a merge
    writes only the windows of newcomers, which become rare as the stream goes on.
    """

    def __init__(self, capacity: int, columns: tuple[int, ...], width: int):
        shape = (capacity, *columns)
        self.key = np.full(shape, np.inf)  # float64
        self.sequence = np.full(shape, -1, np.int64)
        self.centre = np.zeros(shape, np.int64)
        self.slot = np.broadcast_to(
            np.arange(capacity).reshape((-1,) + (1,) * len(columns)), shape).copy()
        self.activations = np.zeros((*shape, width), np.float32)  # [slot, *columns, width]
        self.tokens = np.zeros((*shape, width), np.int32)

    def merge(self, key: np.ndarray, sequence: np.ndarray, activations: np.ndarray,
              tokens: np.ndarray, window: int) -> None:
        """Adds a batch's candidates: `key` `[B, *columns]`, `sequence` `[B]`.

        Vectorised over columns: one lexsort of `[capacity + B, *columns]`; then, for the
        newcomers only, the centre (first argmax) and window are taken from `activations`
        `[B, T, N]` and `tokens` `[B, T]`.
        """
        capacity = self.key.shape[0]
        if capacity == 0:
            return
        batch_shape = key.shape
        keys = np.concatenate([self.key, key])
        sequences = np.concatenate([
            self.sequence,
            np.broadcast_to(sequence.reshape((-1,) + (1,) * (key.ndim - 1)), batch_shape)])
        order = np.lexsort((sequences, keys), axis=0)[:capacity]
        self.key = np.take_along_axis(keys, order, axis=0)
        self.sequence = np.take_along_axis(sequences, order, axis=0)
        valid = np.isfinite(self.key)
        self.sequence[~valid] = -1
        placeholder = np.zeros(batch_shape, np.int64)
        self.centre = np.take_along_axis(np.concatenate([self.centre, placeholder]), order, 0)
        slot = np.take_along_axis(np.concatenate([self.slot, placeholder]), order, axis=0)

        # Each column has as many newcomers as evicted candidates; pair them column by column
        # (nonzero over column-major views lists both in the same column order).
        newcomer = order >= capacity
        kept = np.zeros(keys.shape, bool)
        np.put_along_axis(kept, order, True, axis=0)
        evicted = np.nonzero(np.moveaxis(~kept[:capacity], 0, -1))
        arriving = np.nonzero(np.moveaxis(newcomer, 0, -1))
        slot[arriving[-1:] + arriving[:-1]] = self.slot[evicted[-1:] + evicted[:-1]]
        self.slot = slot

        fresh = np.nonzero(newcomer & valid)
        if fresh[0].size:
            rows, neurons = order[fresh] - capacity, fresh[-1]
            self.centre[fresh] = activations[rows, :, neurons].argmax(axis=1)
            window_activations, window_tokens = gather_windows(
                activations, tokens, rows, self.centre[fresh], neurons, window)
            stored = (slot[fresh],) + fresh[1:]
            self.activations[stored] = window_activations
            self.tokens[stored] = window_tokens

    def windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Window activations and token ids `[capacity, *columns, width]`, in rank order."""
        return (np.take_along_axis(self.activations, self.slot[..., None], axis=0),
                np.take_along_axis(self.tokens, self.slot[..., None], axis=0))
