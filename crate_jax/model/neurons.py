"""Reading a model's neurons out of the same forward pass that computes its logits, and
steering them in it.

Each block `sow`s its neurons into a collection of its own (`neurons_<site>`). Sowing is a no-op
unless that collection is mutable, so a plain `apply` (training) pays nothing, and a capture pays
only for the sites it asks for. Steering is the other direction: `NeuronSteer`s become the
`steering` collection (`steering_variables`) that the same sites read before they sow.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from crate_jax.model.attention import ATTN_SITE
from crate_jax.model.config import ConfigError, ModelConfig
from crate_jax.model.ista import ISTA_SITE
from crate_jax.model.language_model import RESID_SITE, LanguageModel
from crate_jax.model.mlp import MLP_SITE
from crate_jax.model.steering import STEERING

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


# Where each site's steering sits in the variables: the module that sows it, under `layer_<l>`.
_STEERING_MODULE = {ISTA_SITE: ("ista",), MLP_SITE: ("mlp",), ATTN_SITE: ("attention",),
                    RESID_SITE: ()}


@dataclasses.dataclass(frozen=True)
class NeuronSteer:
    """Set (`value`) or scale (`factor`) neuron `index` of `site` in layer `layer`, at every
    absolute position from `from_position` on. Exactly one of `value` and `factor` is given."""

    site: str
    layer: int
    index: int
    value: float | None = None
    factor: float | None = None
    from_position: int = 0

    @classmethod
    def parse(cls, spec: str, value: float | None = None, factor: float | None = None,
              from_position: int = 0) -> NeuronSteer:
        """`site:layer:index`, e.g. `ista:1:137`."""
        parts = spec.split(":")
        if len(parts) != 3 or not all(part.strip().lstrip("-").isdigit() for part in parts[1:]):
            raise ConfigError(f"neuron {spec!r} is not site:layer:index (e.g. ista:1:137; sites: "
                              f"{', '.join(NEURON_SITES)})")
        return cls(parts[0].strip(), int(parts[1]), int(parts[2]), value=value, factor=factor,
                   from_position=from_position)

    def check(self, config: ModelConfig) -> None:
        """A one-line ConfigError naming the allowed values if this model has no such neuron."""
        sites = neuron_sites(config)
        if self.site not in sites:
            raise ConfigError(f"neuron site {self.site!r} is not in this model (attention="
                              f"{config.attention}, sparse_block={config.sparse_block}); "
                              f"it has: {', '.join(sites)}")
        if not 0 <= self.layer < config.num_layers:
            raise ConfigError(f"neuron layer {self.layer} is out of range: this model has "
                              f"layers 0..{config.num_layers - 1}")
        width = neuron_width(config, self.site)
        if not 0 <= self.index < width:
            raise ConfigError(f"neuron index {self.index} is out of range: {self.site} has "
                              f"neurons 0..{width - 1} per layer")
        if (self.value is None) == (self.factor is None):
            raise ConfigError(f"neuron {self.site}:{self.layer}:{self.index} needs exactly one of "
                              "value (set it) or factor (scale it)")
        if self.from_position < 0:
            raise ConfigError(f"from_position must be >= 0, got {self.from_position}")


def steering_variables(config: ModelConfig, steers: Iterable[NeuronSteer]) -> dict:
    """The `steering` collection (`steering.py`) for `steers`, checked against `config`: per
    steered (site, layer) the arrays `mask`, `factor`, `value`, `from_position` (`[width]`)."""
    arrays: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for steer in steers:
        steer.check(config)
        width = neuron_width(config, steer.site)
        entry = arrays.setdefault((steer.site, steer.layer), {
            "mask": np.zeros(width, bool), "factor": np.ones(width, np.float32),
            "value": np.zeros(width, np.float32), "from_position": np.zeros(width, np.int32)})
        entry["mask"][steer.index] = True
        entry["factor"][steer.index] = 0.0 if steer.factor is None else steer.factor
        entry["value"][steer.index] = 0.0 if steer.value is None else steer.value
        entry["from_position"][steer.index] = steer.from_position
    collection: dict = {}
    for (site, layer), entry in arrays.items():
        path = (f"layer_{layer}", *_STEERING_MODULE[site], site)
        collection[path] = {name: jnp.asarray(array) for name, array in entry.items()}
    return {STEERING: traverse_util.unflatten_dict(collection)} if collection else {}
