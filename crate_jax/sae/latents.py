"""An SAE's latents as a neuron site of the model, so the interp stage reads, explains and scores
them like any other: `sae_<name>` is the latents of the SAEs named `<name>` in `sae.sites`
(`sae_mlp`: an SAE on the MLP's hidden layer), one SAE per layer, as wide as the SAE.

`SiteReader` is what the interp stage captures through: the model's own sites
(`apply_with_neurons`) and, for each SAE site asked for, its base site's activations encoded by
that layer's SAE, in the same jitted forward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from crate_jax.layout import RunLayout
from crate_jax.model import LanguageModel, apply_with_neurons, neuron_sites, neuron_width
from crate_jax.sae.model import SaeSettings, encode
from crate_jax.sae.sites import sae_name, sae_site
from crate_jax.sae.train import SaeState, abstract_state, sae_optimizer
from crate_jax.train.checkpoints import Checkpointer


@dataclasses.dataclass(frozen=True)
class TrainedSae:
    """One SAE's layers stacked (`SaeState`), with their settings and the site they read."""

    state: SaeState
    settings: SaeSettings
    base: str


@dataclasses.dataclass(frozen=True, eq=False)
class SiteReader:
    """The neuron sites of `model` and of its `saes` (`{name: TrainedSae}`)."""

    model: LanguageModel
    saes: Mapping[str, TrainedSae] = dataclasses.field(default_factory=dict)

    def sites(self) -> tuple[str, ...]:
        return neuron_sites(self.model.config) + tuple(sae_site(name) for name in self.saes)

    def width(self, site: str) -> int:
        name = sae_name(site)
        if name is None:
            return neuron_width(self.model.config, site)
        return self.saes[name].settings.width

    def apply(self, params, tokens: jax.Array, sites: tuple[str, ...]):
        """`(logits, {site: [layers, batch, seq, width]})` of `sites`, traceable (jit it)."""
        names = {site: sae_name(site) for site in sites}
        bases = {site if name is None else self.saes[name].base for site, name in names.items()}
        logits, neurons = apply_with_neurons(self.model, params, tokens, tuple(sorted(bases)))
        out = {}
        for site, name in names.items():
            out[site] = (neurons[site] if name is None
                         else self._latents(name, neurons[self.saes[name].base]))
        return logits, out

    def _latents(self, name: str, activations: jax.Array) -> jax.Array:
        sae = self.saes[name]

        def layer(params, scale, threshold, x):
            flat = x.reshape(-1, x.shape[-1]).astype(jnp.float32) * scale
            latents = encode(params, flat, sae.settings, threshold)
            return latents.reshape(*x.shape[:-1], -1)

        state = sae.state
        return jax.vmap(layer)(state.params, state.scale, state.threshold, activations)


def as_reader(model_or_reader: LanguageModel | SiteReader) -> SiteReader:
    """A `SiteReader` of a model without SAEs, or the reader given."""
    if isinstance(model_or_reader, SiteReader):
        return model_or_reader
    return SiteReader(model_or_reader)


def load_trained_saes(layout: RunLayout, model: LanguageModel, saes: Mapping[str, str],
                      ) -> dict[str, TrainedSae]:
    """The finished SAEs (`sae/<name>/evaluation.json` present) of `saes` (`{name: site}`), read
    from their last checkpoint; an SAE not finished is left out."""
    found = {}
    for name, base in saes.items():
        folder = layout.sae(name)
        if not folder.evaluation.exists():
            continue
        with Checkpointer(folder.checkpoints, save_every=1, keep=None) as checkpoints:
            step = checkpoints.latest_step()
            meta = checkpoints.meta(step)
            settings = SaeSettings(**meta["settings"])
            abstract = abstract_state(model.config.num_layers,
                                      neuron_width(model.config, base), settings,
                                      sae_optimizer(1e-3))  # the moments' shapes only
            restored, _ = checkpoints.restore(step, abstract.as_dict())
        found[name] = TrainedSae(SaeState.from_dict(restored), settings, base)
    return found
