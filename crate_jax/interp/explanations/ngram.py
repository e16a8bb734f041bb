"""The offline, context-aware backend: explanations that are short lists of token patterns.

After Foote et al. 2023 ("Neuron to Graph"), but fitted statistically on the explanation records
instead of by masking inputs with the model. A pattern constrains the current token and/or one
token among the `context` tokens before it (same sequence):

- `(token, None)`: the current token is `token`;
- `(token, after)`: the current token is `token` and `after` occurs among the preceding tokens;
- `(None, after)`: any token with `after` among the preceding tokens (a topic, a negation scope).

Each pattern carries an activation on the 0-10 scale. The prediction at a position is the
activation of its matching pattern of highest precedence: two-constraint patterns outrank
one-constraint ones, and among equal rank the one listed first wins; 0 where nothing matches.
This is N2G's "longest matching pattern" rule, so a specific pattern can suppress a general one
(`' any' (8)` but `' any' after ' the' (0)`).

Fitting (deterministic, numpy, 2-4 ms for 25 records x 64 tokens on one core):

1. Activations become y = 10 * a / max_activation clipped to [0, 10]. Every position, silent
   ones included (they give the suppressing pairs), yields its candidates: its token; each
   distinct preceding token as a wildcard context; their pairs. They are kept as sparse
   (position, candidate) occurrences, not as dense masks, so no cap on candidates is needed.
2. Left out: tokens and contexts never seen at an activation (they cannot lower the error),
   pairs of two such (see `_candidates`), and, when there are several records, candidates
   matching in one record only: one record's accident is not a rule.
3. Greedy on squared error: starting from 0 everywhere, each round adds the candidate that most
   lowers the error under the precedence rule, its activation being the mean y over the
   positions where it would win (the least-squares constant there). All candidates are scored
   at once with `np.bincount` over the occurrences. After each addition every chosen pattern is
   refitted to the mean y over the positions it still wins (a later pair may take positions from
   an earlier single pattern). Stops at `max_patterns` or when the best gain is below 0.1% of
   the starting error; patterns left winning nowhere are dropped.
4. Ties (gains within 1e-9 relative) go to fewer constraints, then a token over a wildcard,
   then the smaller tokens in string order; local token ids are sorted strings, so the result
   does not depend on the order of the records (up to float rounding of sums, far below the
   3-decimal rounding of the stored activations).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crate_jax.interp.activations.records import ActivationRecord
from crate_jax.interp.explanations.explanation import MAX_NORMALIZED_ACTIVATION, Explanation

_MIN_RELATIVE_GAIN = 1e-3
_TIE_TOLERANCE = 1e-9


class NgramExplainer:
    """At most `max_patterns` patterns over the current token and one of the `context` tokens
    before it, fitted greedily to the records' activations (see the module docstring)."""

    def __init__(self, max_patterns: int = 10, context: int = 8):
        if max_patterns < 0 or context < 1:
            raise ValueError(f"NgramExplainer(max_patterns={max_patterns}, context={context}): "
                             "max_patterns must be >= 0 and context >= 1")
        self.max_patterns = max_patterns
        self.context = context

    def explain(self, records: Sequence[ActivationRecord], max_activation: float) -> Explanation:
        for index, record in enumerate(records):
            if len(record.tokens) != len(record.activations):
                raise ValueError(f"record {index}: {len(record.tokens)} tokens but "
                                 f"{len(record.activations)} activations")
        vocab = sorted({str(token) for record in records for token in record.tokens})
        index = {token: i for i, token in enumerate(vocab)}
        ids, pos_in_seq = _flatten([r.tokens for r in records], index)
        scale = max_activation if max_activation > 0 else 1.0
        activations = np.fromiter((a for r in records for a in r.activations), np.float64,
                                  count=ids.size)
        y = np.clip(MAX_NORMALIZED_ACTIVATION * activations / scale,
                    0.0, MAX_NORMALIZED_ACTIVATION)
        record_of = np.repeat(np.arange(len(records)), [len(r.tokens) for r in records])
        chosen = _fit(ids, pos_in_seq, y, record_of, len(vocab), self.context, self.max_patterns)
        patterns = [{"token": None if t < 0 else vocab[t], "after": None if u < 0 else vocab[u],
                     "activation": activation} for t, u, activation in chosen]
        return Explanation(text=explanation_text(patterns),
                           details={"context": self.context, "patterns": patterns})


class NgramSimulator:
    """Predicts each position's activation from `explanation.details` alone (its patterns and
    context), by the precedence rule of the module docstring."""

    def simulate(self, explanation: Explanation,
                 token_sequences: Sequence[Sequence[str]]) -> list[list[float]]:
        sequences = [list(tokens) for tokens in token_sequences]
        patterns = explanation.details.get("patterns", [])
        context = int(explanation.details.get("context", 8))
        # Two-constraint patterns first; `sorted` is stable, so listed order within a rank.
        ordered = sorted(patterns, key=lambda p: -(p["token"] is not None)
                         - (p["after"] is not None))
        vocab = sorted({p[k] for p in patterns for k in ("token", "after") if p[k] is not None})
        index = {token: i for i, token in enumerate(vocab)}
        ids, pos_in_seq = _flatten(sequences, index)
        positions, afters = _preceding_pairs(ids, pos_in_seq, context)
        preceded = np.zeros((ids.size, len(vocab)), bool)  # [positions, pattern vocab]
        preceded[positions, afters] = True
        predicted = np.zeros(ids.size)
        assigned = np.zeros(ids.size, bool)
        for pattern in ordered:
            match = ~assigned
            if pattern["token"] is not None:
                match &= ids == index[pattern["token"]]
            if pattern["after"] is not None:
                match &= preceded[:, index[pattern["after"]]]
            predicted[match] = float(pattern["activation"])
            assigned |= match
        ends = np.cumsum([len(tokens) for tokens in sequences])[:-1]
        return [part.tolist() for part in np.split(predicted, ends)] if sequences else []


def explanation_text(patterns: Sequence[dict]) -> str:
    """`fires on: ' any' after ' not' (8); any token after ' cat' (5); ' any' (2)`."""
    if not patterns:
        return "never fires on these records"
    parts = []
    for p in patterns:
        if p["token"] is None:
            subject = f"any token after {p['after']!r}"
        elif p["after"] is None:
            subject = repr(p["token"])
        else:
            subject = f"{p['token']!r} after {p['after']!r}"
        parts.append(f"{subject} ({p['activation']:g})")
    return "fires on: " + "; ".join(parts)


def _flatten(sequences: Sequence[Sequence[str]],
             index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, pos_in_seq), both `[positions]` over all sequences concatenated: the token's id in
    `index` (-1 if absent) and its offset inside its own sequence."""
    ids = np.fromiter((index.get(t, -1) for tokens in sequences for t in tokens), np.int64)
    lengths = np.array([len(tokens) for tokens in sequences], np.int64)
    starts = np.cumsum(lengths) - lengths
    return ids, np.arange(ids.size) - np.repeat(starts, lengths)


def _preceding_pairs(ids: np.ndarray, pos_in_seq: np.ndarray,
                     context: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (position, id) pairs, each `[pairs]`, such that token `id` (>= 0) occurs among
    the `context` tokens before `position` in the same sequence.

    Deduplicated without sorting pairs: the token `lag` places back is kept only if it does
    not recur closer to `position` (its next occurrence is at `position` or later).
    """
    order = np.argsort(ids, kind="stable")  # by id, then position
    following = np.full(ids.size, ids.size)
    same = ids[order[1:]] == ids[order[:-1]]
    following[order[:-1][same]] = order[1:][same]
    positions, afters = [], []
    for lag in range(1, context + 1):
        at = np.nonzero(pos_in_seq >= lag)[0]
        if at.size == 0:
            break
        keep = (ids[at - lag] >= 0) & (following[at - lag] >= at)
        positions.append(at[keep])
        afters.append(ids[at - lag][keep])
    if not positions:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(positions), np.concatenate(afters)


def _fit(ids: np.ndarray, pos_in_seq: np.ndarray, y: np.ndarray, record_of: np.ndarray,
         vocab_size: int, context: int, max_patterns: int) -> list[tuple[int, int, float]]:
    """The chosen patterns as (token id or -1, after id or -1, activation rounded to 3
    decimals), in precedence order. `ids`, `pos_in_seq`, `y`, `record_of` are `[positions]`."""
    sse0 = float(np.sum(y * y))
    if sse0 == 0 or max_patterns == 0:
        return []
    occ_pos, occ_cand, cand_token, cand_after = _candidates(
        ids, y, *_preceding_pairs(ids, pos_in_seq, context), vocab_size)
    n_cand = cand_token.size
    if record_of.max() > 0:
        # A candidate spans >= 2 records iff its occurrences' record indices vary: n*sum(r^2)
        # > sum(r)^2 (exact in float64 at these sizes).
        rec = record_of[occ_pos].astype(np.float64)
        n = np.bincount(occ_cand, minlength=n_cand)
        s = np.bincount(occ_cand, rec, n_cand)
        s2 = np.bincount(occ_cand, rec * rec, n_cand)
        keep = (n * s2 - s * s > 0)[occ_cand]
        occ_pos, occ_cand = occ_pos[keep], occ_cand[keep]

    two = (cand_token >= 0) & (cand_after >= 0)
    # Tie preference: fewer constraints, then token over wildcard, then string order.
    order = np.lexsort((cand_after, cand_token, cand_token < 0, two))
    preference = np.empty(n_cand, np.int64)
    preference[order] = np.arange(n_cand)

    winner = np.full(ids.size, -1)  # index into `chosen` of the pattern predicting there
    taken_by_two = np.zeros(ids.size, bool)
    chosen: list[int] = []
    activation = np.zeros(0)
    predicted = np.zeros(ids.size)
    while len(chosen) < max_patterns:
        # A new pair ranks below the chosen pairs only; a new single pattern below all chosen.
        # Positions taken stay taken, so occurrences that cannot win are dropped for good.
        occ_two = two[occ_cand]
        wins = ~np.where(occ_two, taken_by_two[occ_pos], winner[occ_pos] >= 0)
        occ_pos, occ_cand = occ_pos[wins], occ_cand[wins]
        y_occ = y[occ_pos]
        n = np.bincount(occ_cand, minlength=n_cand)
        s = np.bincount(occ_cand, y_occ, n_cand)
        s2 = np.bincount(occ_cand, y_occ * y_occ, n_cand)
        old = np.bincount(occ_cand, ((y - predicted) ** 2)[occ_pos], n_cand)
        gain = old - (s2 - s * s / np.maximum(n, 1))
        best = float(gain.max(initial=0.0))
        if best <= _MIN_RELATIVE_GAIN * sse0:
            break
        tied = np.nonzero(gain >= best - _TIE_TOLERANCE * best)[0]
        candidate = int(tied[np.argmin(preference[tied])])
        match = np.zeros(ids.size, bool)
        match[occ_pos[occ_cand == candidate]] = True
        if two[candidate]:
            winner[match & ~taken_by_two] = len(chosen)
            taken_by_two |= match
        else:
            winner[match & (winner < 0)] = len(chosen)
        chosen.append(candidate)
        won = winner >= 0
        counts = np.bincount(winner[won], minlength=len(chosen))
        activation = np.bincount(winner[won], y[won], len(chosen)) / np.maximum(counts, 1)
        predicted = np.where(won, activation[np.maximum(winner, 0)], 0.0)

    counts = np.bincount(winner[winner >= 0], minlength=len(chosen))
    ranked = sorted((i for i in range(len(chosen)) if counts[i] > 0),
                    key=lambda i: (not two[chosen[i]], i))
    return [(int(cand_token[chosen[i]]), int(cand_after[chosen[i]]),
             round(float(activation[i]), 3)) for i in ranked]


def _candidates(ids: np.ndarray, y: np.ndarray, pair_pos: np.ndarray, pair_after: np.ndarray,
                vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(occ_pos, occ_cand) `[occurrences]`: candidate `occ_cand` matches position `occ_pos`;
    (cand_token, cand_after) `[candidates]`: their token / context ids, -1 for none.

    Candidates 0..V-1 are the tokens, V..2V-1 the wildcard contexts, then the pairs. Tokens and
    contexts never seen at an activation (y > 0) cannot lower the error and are left out; so
    are pairs of such a token with such a context: a pair there could only suppress a positive
    context pattern, which the pair of the token with that context does at least as well.
    """
    token_active = np.bincount(ids, y, vocab_size) > 0
    context_active = np.bincount(pair_after, y[pair_pos], vocab_size) > 0
    at_token = np.nonzero(token_active[ids])[0]
    at_context = context_active[pair_after]
    paired = token_active[ids[pair_pos]] | at_context
    pair_keys, pair_cand = np.unique(ids[pair_pos[paired]] * vocab_size + pair_after[paired],
                                     return_inverse=True)
    occ_pos = np.concatenate([at_token, pair_pos[at_context], pair_pos[paired]])
    occ_cand = np.concatenate([ids[at_token], vocab_size + pair_after[at_context],
                               2 * vocab_size + pair_cand.ravel()])
    everything = np.arange(vocab_size)
    none = np.full(vocab_size, -1)
    cand_token = np.concatenate([everything, none, pair_keys // vocab_size])
    cand_after = np.concatenate([none, everything, pair_keys % vocab_size])
    return occ_pos, occ_cand, cand_token, cand_after
