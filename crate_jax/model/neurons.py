"""Reading a model's neurons out of the same forward pass that computes its logits.

Each block `sow`s its neurons into a collection of its own (`neurons_<site>`). Sowing is a no-op
unless that collection is mutable, so a plain `apply` (training) pays nothing, and a capture pays
only for the sites it asks for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from crate_jax.model.attention import ATTN_SITE
from crate_jax.model.config import ModelConfig
from crate_jax.model.ista import ISTA_SITE
from crate_jax.model.language_model import RESID_SITE, LanguageModel
from crate_jax.model.mlp import MLP_SITE

NEURON_SITES = (ISTA_SITE, MLP_SITE, ATTN_SITE, RESID_SITE)
_LAYER_NAME = re.compile(r"layer_(\d+)$")


def neuron_sites(config: ModelConfig) -> tuple[str, ...]:
    """The sites a variant has: every variant has `attn` and `resid`; `ista`/`mlp` by block."""
    block_site = {"ista": (ISTA_SITE,), "mlp": (MLP_SITE,), "none": ()}[config.sparse_block]
    return block_site + (ATTN_SITE, RESID_SITE)


def neuron_width(config: ModelConfig, site: str) -> int:
    """Neurons per layer at `site`."""
    widths = {ISTA_SITE: config.ista_expansion * config.embed_dim,
              MLP_SITE: config.mlp_expansion * config.embed_dim,
              ATTN_SITE: config.embed_dim, RESID_SITE: config.embed_dim}
    return widths[site]


def apply_with_neurons(model: LanguageModel, params: Any, tokens: jax.Array,
                       sites: Iterable[str] | None = None,
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits and the neurons at `sites` (default: all the model has), in one forward pass.

    Returns `(logits [batch, seq, vocab], {site: [layers, batch, seq, width]})`. Asking for a site
    the variant lacks (`ista` on a model without ISTA) is an error, not an empty result.
    """
    available = neuron_sites(model.config)
    sites = tuple(available if sites is None else sites)
    for site in sites:
        if site not in available:
            raise ValueError(f"neuron site {site!r} is not in this model "
                             f"(attention={model.config.attention}, sparse_block="
                             f"{model.config.sparse_block}); it has: {', '.join(available)}")
    logits, state = model.apply({"params": params}, tokens,
                                mutable=[f"neurons_{site}" for site in sites])
    return logits, {site: stack_layers(state[f"neurons_{site}"]) for site in sites}


def stack_layers(sown: Mapping[str, Any]) -> jax.Array:
    """Sown values of one site, `{layer_i: {...: (array,)}}`, as one `[layers, ...]` array."""
    by_layer = {}
    for path, values in traverse_util.flatten_dict(sown).items():
        layer = next(int(m.group(1)) for key in path if (m := _LAYER_NAME.match(key)))
        by_layer[layer] = values[0]
    return jnp.stack([by_layer[layer] for layer in sorted(by_layer)])
