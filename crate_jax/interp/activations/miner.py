"""Mines, per neuron of one site, the activation records an explainer and a scorer need.

The caller streams the evaluation set (S sequences of T tokens, each run through the model on its
own) in batches and never holds all activations: the miner keeps per neuron only

* the `top_k` sequences with the largest per-sequence max activation (at most one record per
  sequence, as in Bills et al. 2023, who rank text excerpts by their max activation),
* `random_k` windows at a uniformly random position of uniformly random sequences,
* Anthropic-style "interpretability samples" ("Towards Monosemanticity", 2023): `(0, M]`, with M
  the neuron's max activation, is split into `quantile_bins` equal-width intervals of the
  per-sequence max, and `per_bin` sequences are sampled uniformly from each (second pass),
* streaming moments, max and firing frequency over every token.

Every record of a neuron lies in a sequence of its own: its random records are drawn from the
sequences that hold none of its top records, and its bin samples from those that hold neither a
top nor a random record. Records are 64-token windows of 128-token sequences, so two records of
one sequence share most of their tokens (often the peak); whichever records a protocol shows the
explainer and whichever it holds out (`explanations/splits.py`), no held-out token was seen by
the explanation. Without this, 57% of neurons had a held-out random record overlapping one of
their explanation records (random records were shared by all neurons and drawn anywhere). The
price: the random records are uniform over the text outside the neuron's top records, not over
all of it (the paper's corpus is so large that the two coincide there).

A record is the window of `window` tokens of one sequence placed around a centre token `c`:
positions `[c - window // 2, c - window // 2 + window)` shifted to lie inside `[0, T)`, so it never
crosses the start or end of its sequence; if `T < window` it is the whole sequence.

Results depend only on the seed, never on how the stream is cut into batches (statistics up to
float64 rounding). Memory is `O(N * window * (2 * top_k + quantile_bins * per_bin + random_k))`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from crate_jax.interp.activations.moments import RunningMoments
from crate_jax.interp.activations.record_pool import RecordPool, gather_windows, window_starts
from crate_jax.interp.activations.records import ActivationRecord, NeuronId, NeuronRecord

# Which records the miner picks from the same activations; `interp/inputs.json` carries it, so
# an interp folder mined by an older rule is recomputed, not reused. 2: every record of a neuron
# in a sequence of its own (1: random records shared by all neurons, drawn anywhere).
RECORDS_VERSION = 2


class RecordMiner:
    """Streams one site's activations (N neurons) over S sequences of T tokens, in two passes.

    Pass 1 (`observe`) collects top records, random records and statistics; when quantile bins
    are requested, pass 2 (`observe_second_pass`, the same sequences again, any batching)
    samples each bin, whose edges need pass 1's max. Every sequence must be fed exactly once per
    pass. `neuron_records` then builds OpenAI-layout `NeuronRecord`s.

    Randomness: `np.random.default_rng(seed)` draws, up front and for all neurons, a random order
    of the sequences and a uniform centre in each; its first `random_k + top_k` are the candidate
    random windows, captured in pass 1. A neuron's random records are the first `random_k`
    candidates whose sequence holds none of its top records (at most `top_k` candidates are
    passed over, so `random_k` remain while `S >= random_k + top_k`): a uniform sample without
    replacement of the other sequences. In a bin, each (sequence, neuron) gets the priority
    `default_rng([seed, sequence])` draws for it and the `per_bin` smallest priorities among the
    bin's sequences that hold none of the neuron's top or random records are kept: a uniform
    sample without replacement (reservoir sampling with keys), independent of batching.
    """

    def __init__(self, num_neurons: int, seq_len: int, num_sequences: int, *, window: int = 64,
                 top_k: int = 20, random_k: int = 20, quantile_bins: int = 5, per_bin: int = 5,
                 seed: int = 0):
        for name, value, least in (("num_neurons", num_neurons, 1), ("seq_len", seq_len, 1),
                                   ("num_sequences", num_sequences, 1), ("window", window, 1),
                                   ("top_k", top_k, 0), ("random_k", random_k, 0),
                                   ("quantile_bins", quantile_bins, 0), ("per_bin", per_bin, 0),
                                   ("seed", seed, 0)):
            if int(value) != value or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        self.num_neurons, self.seq_len, self.num_sequences = num_neurons, seq_len, num_sequences
        self.window, self.top_k, self.random_k = window, top_k, random_k
        self.quantile_bins, self.per_bin, self.seed = quantile_bins, per_bin, seed
        width = min(window, seq_len)

        self._top = RecordPool(top_k, (num_neurons,), width)
        self._binned = RecordPool(per_bin if quantile_bins else 0, (quantile_bins, num_neurons),
                                   width)
        rng = np.random.default_rng(seed)
        candidates = min(num_sequences, random_k + top_k) if random_k else 0
        # [C] candidate random windows, in draw order: distinct sequences, a centre in each.
        self.candidate_sequence = rng.permutation(num_sequences)[:candidates].astype(np.int64)
        self.candidate_centre = rng.integers(0, seq_len, size=candidates).astype(np.int64)
        self.candidate_activations = np.zeros((candidates, width, num_neurons), np.float32)
        self.candidate_tokens = np.zeros((candidates, width), np.int32)
        self._random_choice = None  # [random_k, N] candidate index (-1: none), after pass 1

        self._moments = RunningMoments(num_neurons)
        self.max_activation = np.full(num_neurons, -np.inf, np.float32)  # [N]
        self.firing_count = np.zeros(num_neurons, np.int64)  # [N] tokens with activation > 0
        self.seen_first = np.zeros(num_sequences, bool)  # [S] observed in pass 1
        self.seen_second = np.zeros(num_sequences, bool)  # [S] observed in pass 2

    # -- streaming ---------------------------------------------------------------------------

    def observe(self, sequence_indices: np.ndarray, tokens: np.ndarray,
                activations: np.ndarray) -> None:
        """Pass 1 on one batch: `sequence_indices` `[B]`, `tokens` `[B, T]` token ids,
        `activations` `[B, T, N]` (any float dtype, e.g. bfloat16; used as float32)."""
        sequences, tokens, activations = self._checked_batch(
            sequence_indices, tokens, activations, self.seen_first, "observe")
        if not sequences.size:
            return
        sequence_max = activations.max(axis=1)  # [B, N]
        self._top.merge(-sequence_max.astype(np.float64), sequences, activations, tokens,
                        self.window)

        chosen = np.nonzero(np.isin(self.candidate_sequence, sequences))[0]
        if chosen.size:
            by_sequence = np.argsort(sequences)
            rows = by_sequence[np.searchsorted(sequences, self.candidate_sequence[chosen],
                                               sorter=by_sequence)]
            window_activations, window_tokens = gather_windows(
                activations, tokens, rows, self.candidate_centre[chosen], None, self.window)
            self.candidate_activations[chosen] = window_activations
            self.candidate_tokens[chosen] = window_tokens

        flat = activations.reshape(-1, self.num_neurons)
        self._moments.add(flat)
        np.maximum(self.max_activation, sequence_max.max(axis=0), out=self.max_activation)
        self.firing_count += np.count_nonzero(flat > 0, axis=0)
        self.seen_first[sequences] = True

    def needs_second_pass(self) -> bool:
        """True when quantile samples are requested (`quantile_bins > 0` and `per_bin > 0`)."""
        return self.quantile_bins > 0 and self.per_bin > 0

    def observe_second_pass(self, sequence_indices: np.ndarray, tokens: np.ndarray,
                            activations: np.ndarray) -> None:
        """Pass 2 on one batch (same shapes as `observe`): samples the quantile bins.

        A sequence whose per-sequence max exceeds pass 1's max (only if pass 2 sees different
        activations, e.g. a nondeterministic model) counts in the top bin. A sequence that holds
        one of the neuron's top or random records is in none of its bins.
        """
        if not self.needs_second_pass():
            raise RuntimeError("no second pass needed (quantile_bins or per_bin is 0)")
        if not self.seen_first.all():
            raise RuntimeError(f"pass 1 is incomplete: {np.count_nonzero(~self.seen_first)} of "
                               f"{self.num_sequences} sequences not observed yet")
        sequences, tokens, activations = self._checked_batch(
            sequence_indices, tokens, activations, self.seen_second, "observe_second_pass")
        if not sequences.size:
            return
        sequence_max = activations.max(axis=1)  # [B, N]
        lower_edges = self.quantile_boundaries()[:, :-1]  # [N, bins]
        bin_index = (sequence_max[..., None] > lower_edges).sum(axis=-1) - 1  # [B, N], -1: none
        priority = np.stack([np.random.default_rng([self.seed, int(s)]).random(self.num_neurons)
                             for s in sequences])  # [B, N]
        in_bin = bin_index[:, None, :] == np.arange(self.quantile_bins)[None, :, None]
        choice = self._random_candidates()  # [random_k, N]
        random_sequence = np.where(choice >= 0, self.candidate_sequence[np.maximum(choice, 0)], -1)
        own = np.concatenate([self._top.sequence, random_sequence])  # [top_k + random_k, N]
        taken = (sequences[:, None, None] == own[None]).any(axis=1)  # [B, N]
        in_bin &= ~taken[:, None, :]
        key = np.where(in_bin, priority[:, None, :], np.inf)  # [B, bins, N]
        self._binned.merge(key, sequences, activations, tokens, self.window)
        self.seen_second[sequences] = True

    def missing_sequences(self, second_pass: bool = False) -> np.ndarray:
        """Sequence indices not yet observed in that pass (what an incomplete pass lacks)."""
        return np.nonzero(~(self.seen_second if second_pass else self.seen_first))[0]

    def _checked_batch(self, sequence_indices, tokens, activations, seen: np.ndarray,
                       caller: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sequences = np.asarray(sequence_indices)
        tokens = np.asarray(tokens)
        activations = np.asarray(activations, dtype=np.float32)
        batch = sequences.shape[0] if sequences.ndim == 1 else -1
        expected = (f"sequence_indices [B], tokens [B, {self.seq_len}], activations "
                    f"[B, {self.seq_len}, {self.num_neurons}]")
        if (batch < 0 or tokens.shape != (batch, self.seq_len)
                or activations.shape != (batch, self.seq_len, self.num_neurons)):
            raise ValueError(f"{caller}: expected {expected}, got {sequences.shape}, "
                             f"{tokens.shape}, {activations.shape}")
        if not (np.issubdtype(sequences.dtype, np.integer)
                and np.issubdtype(tokens.dtype, np.integer)):
            raise ValueError(f"{caller}: sequence_indices and tokens must be integers, got "
                             f"{sequences.dtype} and {tokens.dtype}")
        sequences = sequences.astype(np.int64)
        bad = sequences[(sequences < 0) | (sequences >= self.num_sequences)]
        if bad.size:
            raise ValueError(f"{caller}: sequence index {bad[0]} outside [0, "
                             f"{self.num_sequences})")
        values, counts = np.unique(sequences, return_counts=True)
        repeated = np.concatenate([values[counts > 1], sequences[seen[sequences]]])
        if repeated.size:
            raise ValueError(f"{caller}: sequence {repeated[0]} observed twice in this pass; "
                             "feed each sequence exactly once per pass")
        if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{caller}: token ids must lie in [0, 2**31), got "
                             f"[{tokens.min()}, {tokens.max()}]")
        return sequences, tokens.astype(np.int32), activations

    # -- results -----------------------------------------------------------------------------

    def quantile_boundaries(self) -> np.ndarray:
        """Bin edges `[N, quantile_bins + 1]`: `max(M, 0) * i / quantile_bins`, bin `j` being
        `(edge[j], edge[j + 1]]`. All zero (no sequence fits any bin) where `M <= 0`."""
        top = np.maximum(self.max_activation.astype(np.float64), 0.0)
        return top[:, None] * np.arange(self.quantile_bins + 1) / max(self.quantile_bins, 1)

    def neuron_statistics(self) -> dict[str, np.ndarray]:
        """Per-neuron `[N]` arrays over every pass-1 token: `mean`, `variance` (population),
        `skewness`, `kurtosis` (excess, Fisher: 0 for a Gaussian), `max`, `firing_frequency`
        (fraction of tokens with activation > 0) and `count` (tokens seen)."""
        count = int(self._moments.count)
        return {**self._moments.summary(),
                "max": self.max_activation.astype(np.float64),
                "firing_frequency": self.firing_count / count if count
                else np.full(self.num_neurons, np.nan),
                "count": np.full(self.num_neurons, count, np.int64)}

    def top_records(self) -> dict[str, np.ndarray]:
        """Top candidates, best first: `activation`, `sequence` (-1: empty), `centre` `[top_k, N]`;
        `window_activations`, `window_tokens` `[top_k, N, width]`."""
        window_activations, window_tokens = self._top.windows()
        return {"activation": -self._top.key, "sequence": self._top.sequence,
                "centre": self._top.centre, "window_activations": window_activations,
                "window_tokens": window_tokens}

    def random_records(self) -> dict[str, np.ndarray]:
        """Each neuron's random records, in draw order: `sequence` (-1: none), `centre`
        `[random_k, N]`; `window_activations`, `window_tokens` `[random_k, N, width]`. Needs
        pass 1 complete (which sequences hold a neuron's top records is known only then)."""
        choice = self._random_candidates()
        index = np.maximum(choice, 0)
        neurons = np.arange(self.num_neurons)[None, :]
        return {"sequence": np.where(choice >= 0, self.candidate_sequence[index], -1),
                "centre": np.where(choice >= 0, self.candidate_centre[index], 0),
                "window_activations": self.candidate_activations[index, :, neurons],
                "window_tokens": self.candidate_tokens[index]}

    def _random_candidates(self) -> np.ndarray:
        """`[random_k, N]`: the candidate each neuron's random record is (-1: none left)."""
        if not self.seen_first.all():
            raise RuntimeError(f"pass 1 is incomplete: {np.count_nonzero(~self.seen_first)} of "
                               f"{self.num_sequences} sequences not observed yet")
        if self._random_choice is None:  # pass 1 is over: the top records are final
            taken = (self.candidate_sequence[:, None, None]
                     == self._top.sequence[None]).any(axis=1)  # [C, N]
            rank = np.cumsum(~taken, axis=0) - 1  # [C, N] rank among the free candidates
            kept = np.nonzero(~taken & (rank < self.random_k))
            self._random_choice = np.full((self.random_k, self.num_neurons), -1, np.int64)
            self._random_choice[rank[kept], kept[1]] = kept[0]
        return self._random_choice

    def quantile_records(self) -> dict[str, np.ndarray]:
        """Bin samples in priority order: `priority`, `sequence` (-1: empty), `centre`
        `[per_bin, bins, N]`; `window_activations`, `window_tokens` `[per_bin, bins, N, width]`."""
        window_activations, window_tokens = self._binned.windows()
        return {"priority": self._binned.key, "sequence": self._binned.sequence,
                "centre": self._binned.centre, "window_activations": window_activations,
                "window_tokens": window_tokens}

    def covered_positions(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per neuron, every evaluation position that one of its records shows (top, random and
        quantile-bin records), each once: `(token ids [P], activations [P])`. What the token
        reference's means must leave out (`token_means`). Needs pass 1 (and pass 2 for bins)."""
        top_activations, top_tokens = self._top.windows()  # [top_k, N, width]
        bin_activations, bin_tokens = self._binned.windows()  # [per_bin, bins, N, width]
        random = self.random_records()  # [random_k, N(, width)]
        width = top_tokens.shape[-1]
        covered = []
        for n in range(self.num_neurons):
            sequences = np.concatenate([self._top.sequence[:, n], random["sequence"][:, n],
                                        self._binned.sequence[..., n].ravel()])
            centres = np.concatenate([self._top.centre[:, n], random["centre"][:, n],
                                      self._binned.centre[..., n].ravel()])
            tokens = np.concatenate([top_tokens[:, n], random["window_tokens"][:, n],
                                     bin_tokens[..., n, :].reshape(-1, width)])
            values = np.concatenate([top_activations[:, n], random["window_activations"][:, n],
                                     bin_activations[..., n, :].reshape(-1, width)])
            real = sequences >= 0
            starts = window_starts(centres[real], self.seq_len, self.window)
            positions = (sequences[real, None] * self.seq_len + starts[:, None]
                         + np.arange(width)[None, :]).ravel()
            _, first = np.unique(positions, return_index=True)
            covered.append((tokens[real].ravel()[first], values[real].ravel()[first]))
        return covered

    def record_starts(self) -> dict[str, np.ndarray]:
        """Where each neuron's records start in the evaluation text (`sequence * seq_len` plus
        the window's first position; -1 for no record), in the order `neuron_records` lists
        them: `top` `[N, top_k]`, `random` `[N, random_k]`, `bins` `[N, bins, per_bin]`."""

        def starts(sequence: np.ndarray, centre: np.ndarray) -> np.ndarray:
            first = sequence * self.seq_len + window_starts(centre, self.seq_len, self.window)
            return np.where(sequence >= 0, first, -1)

        random = self.random_records()
        binned = starts(self._binned.sequence, self._binned.centre)  # [per_bin, bins, N]
        return {"top": starts(self._top.sequence, self._top.centre).T,
                "random": starts(random["sequence"], random["centre"]).T,
                "bins": binned.transpose(2, 1, 0)}

    def neuron_records(self, layer_index: int, neuron_indices: Iterable[int],
                       decode: Callable[[int], str]) -> Iterator[NeuronRecord]:
        """One `NeuronRecord` per neuron index; `decode(token_id)` gives a token's text (called
        once per distinct id). Needs both passes complete."""
        if not self.seen_first.all() or (self.needs_second_pass() and not self.seen_second.all()):
            missing = self.missing_sequences(second_pass=self.seen_first.all())
            raise RuntimeError(f"mining is incomplete: {missing.size} sequences (first: "
                               f"{missing[0]}) not observed in pass "
                               f"{2 if self.seen_first.all() else 1}")
        decode = functools.lru_cache(maxsize=None)(decode)

        def text(token_ids: np.ndarray) -> list[str]:
            return [decode(int(t)) for t in token_ids]

        candidate_texts = [text(ids) for ids in self.candidate_tokens]
        random_choice = self._random_candidates()  # [random_k, N]
        statistics = self._moments.summary()
        boundaries = self.quantile_boundaries()
        top, binned = self.top_records(), self.quantile_records()
        for neuron in neuron_indices:
            n = int(neuron)
            if not 0 <= n < self.num_neurons:
                raise ValueError(f"neuron index {n} outside [0, {self.num_neurons})")
            record = NeuronRecord(
                neuron_id=NeuronId(layer_index=int(layer_index), neuron_index=n),
                random_sample=[ActivationRecord(list(candidate_texts[c]),
                                                self.candidate_activations[c, :, n].tolist())
                               for c in random_choice[:, n] if c >= 0],
                most_positive_activation_records=[
                    ActivationRecord(text(top["window_tokens"][k, n]),
                                     top["window_activations"][k, n].tolist())
                    for k in range(self.top_k) if top["sequence"][k, n] >= 0],
                **{name: float(values[n]) for name, values in statistics.items()})
            if self.needs_second_pass():
                record.random_sample_by_quantile = [
                    [ActivationRecord(text(binned["window_tokens"][k, j, n]),
                                      binned["window_activations"][k, j, n].tolist())
                     for k in range(self.per_bin) if binned["sequence"][k, j, n] >= 0]
                    for j in range(self.quantile_bins)]
                record.quantile_boundaries = boundaries[n].tolist()
            yield record
