"""The hook through which a forward pass sets or scales chosen neurons: steering as data.

A site that sows its neurons (`neurons.py`) first passes them through `steered`. Without a
`steering` collection in the variables, `steered` returns its input untouched and nothing is
traced, so training, checkpoints and every plain `apply` run exactly the code they ran before.
With one, each steered (site, layer) holds per-neuron arrays (all `[width]`):

    mask           bool: the neuron is steered
    factor, value  new = x * factor + value (set: factor 0; scale: value 0)
    from_position  int: absolute position from which the neuron is steered

Being arrays, not code, new values or neurons reuse the same jitted computation.
`neurons.steering_variables` builds the collection from `NeuronSteer`s.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

STEERING = "steering"


def steered(module: nn.Module, site: str, x: jax.Array, positions: jax.Array | None) -> jax.Array:
    """`x` (`[batch, seq, width]`) with `module`'s steering of `site` applied, if it has one.

    `positions` (`[seq]`, absolute; None: 0..seq-1) say where each row sits in the sequence,
    which in cached decoding is not its index in `x`.
    """
    if not module.has_variable(STEERING, site):
        return x
    steering = module.get_variable(STEERING, site)
    if positions is None:
        positions = jnp.arange(x.shape[-2])
    active = steering["mask"] & (positions[:, None] >= steering["from_position"])  # [seq, width]
    new = x * steering["factor"].astype(x.dtype) + steering["value"].astype(x.dtype)
    return jnp.where(active, new, x)
