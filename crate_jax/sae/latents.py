"""An SAE's latents as a neuron site of the model, so the interp stage reads, explains and scores
them like any other: `sae_<site>` is the latents of the SAEs of `<site>` (`sae_mlp`: an SAE on
the MLP's hidden layer), one SAE per layer, as wide as the SAE.

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
from crate_jax.sae.train import SaeState, abstract_state, sae_optimizer
from crate_jax.train.checkpoints import Checkpointer

SAE_SITE_PREFIX = "sae_"


def sae_site(base: str) -> str:
    return f"{SAE_SITE_PREFIX}{base}"


def base_site(site: str) -> str | None:
    """The site an SAE site's SAEs read (`sae_mlp` -> `mlp`); None for a model's own site."""
    return site.removeprefix(SAE_SITE_PREFIX) if site.startswith(SAE_SITE_PREFIX) else None


@dataclasses.dataclass(frozen=True)
class TrainedSae:
    """One site's SAEs, every layer stacked (`SaeState`), with their settings."""

    state: SaeState
    settings: SaeSettings


@dataclasses.dataclass(frozen=True, eq=False)
class SiteReader:
    """The neuron sites of `model` and of its `saes` (`{base site: TrainedSae}`)."""

    model: LanguageModel
    saes: Mapping[str, TrainedSae] = dataclasses.field(default_factory=dict)

    def sites(self) -> tuple[str, ...]:
        return neuron_sites(self.model.config) + tuple(sae_site(base) for base in self.saes)

    def width(self, site: str) -> int:
        base = base_site(site)
        if base is None:
            return neuron_width(self.model.config, site)
        return self.saes[base].settings.width

    def apply(self, params, tokens: jax.Array, sites: tuple[str, ...]):
        """`(logits, {site: [layers, batch, seq, width]})` of `sites`, traceable (jit it)."""
        bases = {base_site(site) or site for site in sites}
        logits, neurons = apply_with_neurons(self.model, params, tokens, tuple(sorted(bases)))
        out = {}
        for site in sites:
            base = base_site(site)
            out[site] = neurons[site] if base is None else self._latents(base, neurons[base])
        return logits, out

    def _latents(self, base: str, activations: jax.Array) -> jax.Array:
        sae = self.saes[base]

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


def configured_bases(config) -> tuple[str, ...]:
    """The sites `config.sae.sites` fits SAEs on (none in a config older than the sae stage)."""
    sae = config.get("sae") if hasattr(config, "get") else None
    if not sae:
        return ()
    return tuple(site.strip() for site in sae.sites.split(",") if site.strip())


def load_trained_saes(layout: RunLayout, model: LanguageModel, bases: tuple[str, ...],
                      ) -> dict[str, TrainedSae]:
    """The finished SAEs (`sae/<site>/evaluation.json` present) of `bases`, read from their last
    checkpoint; a base without finished SAEs is left out."""
    found = {}
    for base in bases:
        folder = layout.sae(base)
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
        found[base] = TrainedSae(SaeState.from_dict(restored), settings)
    return found
