"""Explainer and simulator from `config.interp.explainer`: `token_lookup` or `llm`.

The `random` null baseline is not a backend of its own: every neuron is also simulated from
another neuron's explanation (`interp.random_baseline`), with the same simulator.
"""

from __future__ import annotations

from crate_jax.interp.explanation import Explainer, Simulator
from crate_jax.interp.token_lookup import TokenLookupExplainer, TokenLookupSimulator

BACKENDS = ("token_lookup", "llm")


def make_backend(interp_config) -> tuple[Explainer, Simulator]:
    kind = interp_config.explainer
    if kind == "token_lookup":
        return TokenLookupExplainer(interp_config.lookup_tokens), TokenLookupSimulator()
    if kind == "llm":
        from crate_jax.interp.llm_backend import make_llm_backend  # optional, lazily imported

        return make_llm_backend(interp_config.llm)
    raise ValueError(f"interp.explainer={kind!r} is not one of {', '.join(BACKENDS)}")
