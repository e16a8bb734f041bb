"""CRATE's sparse-coding block: a few non-negative ISTA steps over an overcomplete dictionary.

With dictionary D (`[d, expansion * d]`), step size eta and threshold lambda, starting from z = 0:

    z_{k+1} = relu(z_k + eta * D^T (x - D z_k) - eta * lambda)

so the first step is the plain non-negative soft threshold relu(eta D^T x - eta lambda). The
block returns D z. Its code z (`expansion * d` wide, exactly zero where inactive) is the layer's
"neurons" in the paper's interpretability study.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from crate_jax.model.initializers import DICTIONARY_INIT
from crate_jax.model.steering import spliced, steered

ISTA_SITE = "ista"


def ista_code(x: jax.Array, dictionary: jax.Array, num_steps: int, step_size: float,
              threshold: float,
              steer: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """The non-negative sparse code of `x` (`[..., d]`) over `dictionary` (`[d, p]`): `[..., p]`.

    D^T x is computed once and reused: D^T (x - D z) = D^T x - D^T (D z). `steer` (steering)
    rewrites the code after every step, so later steps see the steered code: a neuron held at 0
    is then exactly its dictionary column removed.
    """
    steer = steer or (lambda code: code)
    correlation = x @ dictionary                       # D^T x, [..., p]
    shrink = step_size * threshold
    code = steer(jax.nn.relu(step_size * correlation - shrink))  # first step, from z = 0
    for _ in range(num_steps - 1):
        reconstruction = code @ dictionary.T           # D z, [..., d]
        gradient_step = correlation - reconstruction @ dictionary
        code = steer(jax.nn.relu(code + step_size * gradient_step - shrink))
    return code


class SparseCodingBlock(nn.Module):
    """x -> D z with z = ISTA code of x. The caller decides whether a residual goes around it."""

    expansion: int = 4
    num_steps: int = 2
    step_size: float = 0.1
    threshold: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """`x`: `[batch, seq, d]` (already layer-normed) -> `[batch, seq, d]`; `positions`
        (`[seq]`, absolute) only place any steering."""
        width = x.shape[-1]
        dictionary = self.param("dictionary", DICTIONARY_INIT, (width, self.expansion * width))
        dictionary = dictionary.astype(self.dtype)
        code = ista_code(x.astype(self.dtype), dictionary, self.num_steps, self.step_size,
                         self.threshold, steer=lambda z: steered(self, ISTA_SITE, z, positions))
        code = spliced(self, ISTA_SITE, code)
        self.sow(f"neurons_{ISTA_SITE}", ISTA_SITE, code)
        return code @ dictionary.T
