"""Training SAEs on activations streamed from a trained run's model: the `sae` stage's loop.

One SAE per layer of a neuron site, all layers of the site trained together: their parameters
are stacked on a leading layer axis and one jitted, `vmap`ped step updates every layer from one
forward pass of the model. Activations are never stored: step `s` reads the windows the
`WindowSampler` of `(sae.seed, s)` draws from the training split, runs the model on them and
trains on every token's activation at the site. So the step number is the stream's whole state,
and a resumed training equals an uninterrupted one.

The step (Gao et al.'s recipe): Adam on the loss of `model.training_loss`, the decoder gradient
without its component along each unit row, the rows renormalised after the update; per latent,
the tokens since it last fired (what AuxK and the dead fraction count); BatchTopK's inference
threshold as an exponential mean of each batch's smallest kept activation. Activations are split
over the mesh's batch axes like training batches; the SAE state is replicated.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from crate_jax.model import LanguageModel, apply_with_neurons
from crate_jax.sae.model import (
    THRESHOLD_DECAY,
    SaeSettings,
    init_params,
    input_scale,
    training_loss,
    unit_rows,
    without_parallel_component,
)
from crate_jax.train.sharding import BATCH_AXES, replicated

# A latent's silence is counted up to here (int32 never overflows; anything past the dead
# threshold reads the same).
_SILENCE_CAP = 2**30


@struct.dataclass
class SaeState:
    """Every layer's SAE of one site, stacked on a leading layer axis; `step` counts updates."""

    step: jax.Array
    params: Any                # {b_pre [L, d], encoder [L, d, m], b_enc [L, m], decoder [L, m, d]}
    opt_state: Any
    tokens_since_fired: jax.Array  # [L, m] int32
    threshold: jax.Array       # [L]: BatchTopK's inference threshold (0 for the other kinds)
    scale: jax.Array           # [L]: input normalisation, fixed at initialisation

    def as_dict(self) -> dict:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state,
                "tokens_since_fired": self.tokens_since_fired, "threshold": self.threshold,
                "scale": self.scale}

    @classmethod
    def from_dict(cls, values: dict) -> SaeState:
        return cls(**values)


def sae_optimizer(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


def initial_state(key: jax.Array, sample: jax.Array, settings: SaeSettings,
                  optimizer: optax.GradientTransformation) -> SaeState:
    """Every layer's SAE from `sample` (`[layers, tokens, d]`, the model's units): its scale,
    then parameters fitted to the normalised sample (`model.init_params`)."""
    scale = jax.vmap(input_scale)(sample)
    keys = jax.random.split(key, sample.shape[0])
    params = jax.vmap(lambda k, x, s: init_params(k, x * s, settings))(keys, sample, scale)
    layers = sample.shape[0]
    return SaeState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=jax.vmap(optimizer.init)(params),
                    tokens_since_fired=jnp.zeros((layers, settings.width), jnp.int32),
                    threshold=jnp.zeros((layers,), jnp.float32), scale=scale)


def abstract_state(layers: int, d: int, settings: SaeSettings,
                   optimizer: optax.GradientTransformation) -> SaeState:
    """The shapes of a site's SAE state, without computing it: what a checkpoint is read into."""
    return jax.eval_shape(lambda x: initial_state(jax.random.key(0), x, settings, optimizer),
                          jax.ShapeDtypeStruct((layers, 2, d), jnp.float32))


def _layer_step(params, opt_state, since, threshold, scale, x, first, settings: SaeSettings,
                optimizer: optax.GradientTransformation):
    """One layer's update from its activations `x` (`[tokens, d]`, the model's units)."""
    x = x.astype(jnp.float32) * scale
    dead = since >= settings.dead_after_tokens
    (loss, out), grads = jax.value_and_grad(training_loss, has_aux=True)(params, x, dead,
                                                                         settings)
    grads = {**grads, "decoder": without_parallel_component(grads["decoder"],
                                                            params["decoder"])}
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    params = {**params, "decoder": unit_rows(params["decoder"])}
    fired = jnp.any(out["latents"] > 0, axis=0)
    since = jnp.where(fired, 0, jnp.minimum(since + x.shape[0], _SILENCE_CAP))
    if settings.kind == "batchtopk":
        smallest = out["smallest_kept"]
        threshold = jnp.where(first, smallest,
                              THRESHOLD_DECAY * threshold + (1 - THRESHOLD_DECAY) * smallest)
    metrics = {"loss": loss, "fvu": out["fvu"], "l0": out["l0"], "aux_loss": out["aux"],
               "dead_fraction": jnp.mean(dead)}
    return params, opt_state, since, threshold, metrics


def make_sae_step(settings: SaeSettings, optimizer: optax.GradientTransformation, mesh):
    """`(state, activations [layers, tokens, d]) -> (state, {metric: [layers]})`, jitted, the
    tokens split over the mesh's batch axes."""
    layer_step = functools.partial(_layer_step, settings=settings, optimizer=optimizer)

    def step(state: SaeState, activations: jax.Array):
        first = state.step == 0
        params, opt_state, since, threshold, metrics = jax.vmap(
            layer_step, in_axes=(0, 0, 0, 0, 0, 0, None))(
                state.params, state.opt_state, state.tokens_since_fired, state.threshold,
                state.scale, activations, first)
        return SaeState(step=state.step + 1, params=params, opt_state=opt_state,
                        tokens_since_fired=since, threshold=threshold,
                        scale=state.scale), metrics

    return jax.jit(step, in_shardings=(replicated(mesh), activation_sharding(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def activation_sharding(mesh) -> NamedSharding:
    """`[layers, tokens, d]` activations, their tokens over the batch axes."""
    return NamedSharding(mesh, P(None, BATCH_AXES))


def make_site_capture(model: LanguageModel, site: str):
    """`(params, windows [batch, seq]) -> [layers, batch * seq, width]`: a site's activations
    of every token, in one jitted forward pass."""

    def capture(params, tokens):
        neurons = apply_with_neurons(model, params, tokens, (site,))[1][site]
        return neurons.reshape(neurons.shape[0], -1, neurons.shape[-1])

    return jax.jit(capture)


def stream_batch(sampler, step: int) -> np.ndarray:
    """The model's input windows of SAE step `step` (the sampler's windows less their last,
    target-only, token)."""
    return sampler.batch(step)[:, :-1]
