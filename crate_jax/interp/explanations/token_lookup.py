"""The offline, deterministic backend: explanations that are lists of tokens with weights.

The explainer averages the neuron's activation per token string over the explanation records and
keeps the tokens with the highest averages ("fires on: ` return` (10), ` Returns` (7), ...").
The simulator predicts each token's activation as its weight in that list, 0 for any other
token. It cannot describe context-dependent behaviour, so its scores are a lower bound on what a
strong LLM explainer finds, but they need no network and are exactly reproducible.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from crate_jax.interp.activations.records import ActivationRecord
from crate_jax.interp.explanations.explanation import MAX_NORMALIZED_ACTIVATION, Explanation


class TokenLookupExplainer:
    """At most `max_tokens` tokens whose mean activation on the records is highest (> 0)."""

    def __init__(self, max_tokens: int = 10):
        self.max_tokens = max_tokens

    def explain(self, records: Sequence[ActivationRecord], max_activation: float) -> Explanation:
        totals: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for record in records:
            for token, activation in zip(record.tokens, record.activations, strict=True):
                totals[token] += activation
                counts[token] += 1
        means = {token: totals[token] / counts[token] for token in totals}
        ranked = sorted((t for t in means if means[t] > 0), key=lambda t: (-means[t], t))
        chosen = ranked[:self.max_tokens]
        scale = max_activation if max_activation > 0 else 1.0
        weights = {t: round(min(MAX_NORMALIZED_ACTIVATION,
                                MAX_NORMALIZED_ACTIVATION * means[t] / scale), 3)
                   for t in chosen}
        text = ("fires on: " + ", ".join(f"{t!r} ({weights[t]:g})" for t in chosen)
                if chosen else "never fires on these records")
        return Explanation(text=text, details={"token_weights": weights})


class TokenLookupSimulator:
    """Predicts `weights[token]` for listed tokens and 0 elsewhere."""

    def simulate(self, explanation: Explanation,
                 token_sequences: Sequence[Sequence[str]]) -> list[list[float]]:
        weight = {token: float(value)
                  for token, value in explanation.details.get("token_weights", {}).items()}.get
        return [[weight(token, 0.0) for token in tokens] for tokens in token_sequences]
