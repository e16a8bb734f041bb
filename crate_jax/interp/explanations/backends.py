"""Explainer, simulator and judge of each `interp.explainer` kind.

`token_lookup` and `ngram` are offline and deterministic; `truth` is the planted corpus's
control (`truth_control`); `llm` is any OpenAI-compatible server. An offline simulator is its
own detection and fuzzing judge (`judging.SimulatorJudge`); the LLM answers delphi's prompts
(`llm_judge`). The `random` null baseline is not a backend of its own: every neuron is also
scored with another neuron's explanation (`interp.random_baseline`), by the same backend.
"""

from __future__ import annotations

from crate_jax.interp.explanations.explanation import BackendError, Explainer, Judge, Simulator
from crate_jax.interp.explanations.judging import SimulatorJudge
from crate_jax.interp.explanations.ngram import NgramExplainer, NgramSimulator
from crate_jax.interp.explanations.token_lookup import TokenLookupExplainer, TokenLookupSimulator
from crate_jax.interp.explanations.truth_control import (
    PlantedLabels,
    TruthExplainer,
    TruthSimulator,
)
from crate_jax.model import ConfigError

BACKENDS = ("token_lookup", "ngram", "truth", "llm")


def explainer_kinds(interp_config) -> list[str]:
    """`interp.explainer` (the headline scores) then each of `interp.compared_explainers`, in
    order, once each; a `ConfigError` for an unknown kind."""
    compared = [kind.strip() for kind in interp_config.compared_explainers.split(",")
                if kind.strip()]
    for key, kind in [("interp.explainer", interp_config.explainer)] + [
            ("interp.compared_explainers", kind) for kind in compared]:
        if kind not in BACKENDS:
            raise ConfigError(f"{key}={kind!r} is not one of {', '.join(BACKENDS)}")
    return list(dict.fromkeys([interp_config.explainer, *compared]))


def make_backend(interp_config, kind: str,
                 truth: PlantedLabels | None = None) -> tuple[Explainer, Simulator, Judge]:
    """The explainer, simulator and judge of `kind`; `truth` (the planted labels of the
    evaluation text) is needed by `truth` only."""
    if kind == "token_lookup":
        simulator = TokenLookupSimulator()
        return TokenLookupExplainer(interp_config.lookup_tokens), simulator, \
            SimulatorJudge(simulator)
    if kind == "ngram":
        simulator = NgramSimulator()
        return NgramExplainer(interp_config.ngram_patterns, interp_config.ngram_context), \
            simulator, SimulatorJudge(simulator)
    if kind == "truth":
        if truth is None:
            raise ConfigError("interp.explainer='truth' is the planted corpus's control: it "
                              "needs data.source='planted' (this run's data has no planted "
                              "truth)")
        simulator = TruthSimulator(truth)
        return TruthExplainer(truth), simulator, SimulatorJudge(simulator)
    if kind == "llm":
        return _llm_backend(interp_config.llm)
    raise ConfigError(f"interp.explainer={kind!r} is not one of {', '.join(BACKENDS)}")


def check_llm_server(interp_config) -> None:
    """When an `llm` kind is asked for, one request to its server (`GET /models`, no retry),
    so that a server that is down or a wrong `interp.llm.base_url` stops the stage before the
    minutes of mining, not after. Any HTTP answer counts as up (some servers lack `/models`)."""
    if "llm" not in explainer_kinds(interp_config):
        return
    from crate_jax.interp.explanations.llm_client import RequestRejected

    client = _llm_client(interp_config.llm, max_retries=0)
    try:
        client.list_models()
    except RequestRejected:
        return
    except BackendError as error:
        raise BackendError(
            f"interp.llm.base_url={interp_config.llm.base_url}: no server answers there "
            f"({error}); start it or correct the URL, then rerun (nothing was mined or "
            "explained yet)") from None


def _llm_client(llm_config, max_retries: int):
    from crate_jax.interp.explanations.llm_client import OpenAICompatibleClient

    return OpenAICompatibleClient(
        llm_config.base_url, llm_config.model, api_key_env=llm_config.api_key_env or None,
        timeout_s=llm_config.timeout_s, max_retries=max_retries,
        max_concurrency=llm_config.max_concurrency)


def _llm_backend(llm_config) -> tuple[Explainer, Simulator, Judge]:
    """One client (shared concurrency limit and retries) for explainer, simulator and judge."""
    from crate_jax.interp.explanations.llm_backend import LLMExplainer, LLMSimulator
    from crate_jax.interp.explanations.llm_judge import LLMJudge

    if not llm_config.model:
        raise ConfigError("interp.explainer='llm' needs interp.llm.model (the model name the "
                         f"server at {llm_config.base_url} serves)")
    client = _llm_client(llm_config, max_retries=llm_config.max_retries)
    return (LLMExplainer(client), LLMSimulator(client, mode=llm_config.simulator_mode),
            LLMJudge(client))
