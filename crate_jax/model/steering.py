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

Splicing (`splicing`, `spliced`) is the other hook: a function replaces a (site, layer)'s
activations, such as an SAE's reconstruction of them or their mean (`crate_jax.sae.evaluate`).
It is code, not data, so it acts on a forward pass traced inside the `splicing` block: jit the
function that enters the block, not one traced before it.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Callable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

STEERING = "steering"

Splice = Callable[[jax.Array], jax.Array]
_SPLICES: contextvars.ContextVar[Mapping[tuple[str, int], Splice] | None] = (
    contextvars.ContextVar("splices", default=None))
_LAYER = re.compile(r"layer_(\d+)$")


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


@contextlib.contextmanager
def splicing(functions: Mapping[tuple[str, int], Splice]) -> Iterator[None]:
    """Within the block, a forward pass traced replaces the activations of each `(site, layer)`
    of `functions` by `function(activations)`: what flows on and what is sown."""
    token = _SPLICES.set(dict(functions))
    try:
        yield
    finally:
        _SPLICES.reset(token)


def spliced(module: nn.Module, site: str, x: jax.Array) -> jax.Array:
    """`x`, or the splice of `site` at `module`'s layer while `splicing` says so."""
    functions = _SPLICES.get()
    if not functions:
        return x
    layer = next((int(m.group(1)) for name in module.scope.path
                  if (m := _LAYER.match(name))), None)
    function = functions.get((site, layer))
    return x if function is None else function(x)
