"""Explainer and simulator from `config.interp.explainer`: `token_lookup` or `llm`.

The `random` null baseline is not a backend of its own: every neuron is also simulated from
another neuron's explanation (`interp.random_baseline`), with the same simulator.
"""

from __future__ import annotations

from crate_jax.interp.explanations.explanation import Explainer, Simulator
from crate_jax.interp.explanations.token_lookup import TokenLookupExplainer, TokenLookupSimulator
from crate_jax.model import ConfigError

BACKENDS = ("token_lookup", "llm")


def make_backend(interp_config) -> tuple[Explainer, Simulator]:
    kind = interp_config.explainer
    if kind == "token_lookup":
        return TokenLookupExplainer(interp_config.lookup_tokens), TokenLookupSimulator()
    if kind == "llm":
        return _llm_backend(interp_config.llm)
    raise ConfigError(f"interp.explainer={kind!r} is not one of {', '.join(BACKENDS)}")


def _llm_backend(llm_config) -> tuple[Explainer, Simulator]:
    """One client (shared concurrency limit and retries) for the explainer and the simulator."""
    from crate_jax.interp.explanations.llm_backend import LLMExplainer, LLMSimulator
    from crate_jax.interp.explanations.llm_client import OpenAICompatibleClient

    if not llm_config.model:
        raise ConfigError("interp.explainer='llm' needs interp.llm.model (the model name the "
                         f"server at {llm_config.base_url} serves)")
    client = OpenAICompatibleClient(
        llm_config.base_url, llm_config.model, api_key_env=llm_config.api_key_env or None,
        timeout_s=llm_config.timeout_s, max_retries=llm_config.max_retries,
        max_concurrency=llm_config.max_concurrency)
    return LLMExplainer(client), LLMSimulator(client, mode=llm_config.simulator_mode)
