"""The interp stage's up-front checks: `config.interp` (ranges, sites the model has, the
explainers and their needs), refused with one line before mining."""

from __future__ import annotations

import typing

from crate_jax.config_rules import COUNT, SEED, Rule, check_rules, integer, number
from crate_jax.data.sources import is_planted
from crate_jax.interp.evaluate import requested_sites
from crate_jax.interp.explanations.backends import explainer_kinds, make_backend
from crate_jax.interp.explanations.llm_backend import SimulationMode
from crate_jax.interp.explanations.splits import check_record_protocol
from crate_jax.model import ConfigError

# The bounds of `interp.miner.RecordMiner` and of the scoring that follows it.
INTERP_RULES: dict[str, Rule] = {
    "interp.num_sequences": COUNT,
    "interp.neurons_per_layer": integer(0),  # 0 = every neuron
    "interp.seq_len": COUNT,
    "interp.batch_size": COUNT,
    "interp.window": COUNT,
    "interp.top_k": integer(0),
    "interp.random_k": integer(0),
    "interp.quantile_bins": integer(0),
    "interp.per_bin": integer(0),
    "interp.eps": number(0),
    "interp.lookup_tokens": COUNT,
    "interp.ngram_patterns": COUNT,
    "interp.ngram_context": COUNT,
    "interp.token_table_entries": COUNT,
    "interp.workers": COUNT,
    "interp.bootstrap_samples": COUNT,
    "interp.seed": SEED,
}

LLM_RULES: dict[str, Rule] = {
    "interp.llm.timeout_s": number(0, low_open=True),
    "interp.llm.max_retries": integer(0),
    "interp.llm.max_concurrency": COUNT,
}


def check_interp_config(config, model) -> None:
    interp = config.interp
    check_rules(config, INTERP_RULES)
    if interp.seq_len > config.model.max_len:
        raise ConfigError(f"interp.seq_len={interp.seq_len} exceeds model.max_len="
                          f"{config.model.max_len}; lower interp.seq_len")
    check_record_protocol(interp.protocol, interp.top_k, interp.random_k)
    requested_sites(config, model)
    kinds = explainer_kinds(interp)
    if "llm" in kinds:
        check_rules(config, LLM_RULES)
        modes = typing.get_args(SimulationMode)
        if interp.llm.simulator_mode not in modes:
            raise ConfigError(f"interp.llm.simulator_mode={interp.llm.simulator_mode!r} is not "
                              f"one of {', '.join(modes)}")
    if "truth" in kinds and not is_planted(config.data.source):
        raise ConfigError(f"interp.explainer={interp.explainer!r}, interp.compared_explainers="
                          f"{interp.compared_explainers!r}: 'truth' is the planted corpus's "
                          f"control; it needs data.source='planted', not "
                          f"{config.data.source!r}")
    for kind in kinds:  # each one's needs (interp.llm.model), offline; truth's are above
        if kind != "truth":
            make_backend(interp, kind)
