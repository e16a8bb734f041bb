"""The GPT-2 feed-forward block, the dense counterpart of CRATE's ISTA block."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from crate_jax.model.initializers import DEFAULT_INIT
from crate_jax.model.steering import spliced, steered

MLP_SITE = "mlp"

ACTIVATIONS = {
    "relu": jax.nn.relu,  # the paper's GPT-2 baseline
    # PyTorch's default GELU is the exact (erf) form.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    # OpenAI's GPT-2 (transformers' `gelu_new`): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


class FeedForwardBlock(nn.Module):
    """Dense(expansion * d) -> activation -> Dense(d); the hidden layer is the `mlp` neurons."""

    expansion: int = 4
    activation: str = "relu"
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    out_init: nn.initializers.Initializer = DEFAULT_INIT

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """`x`: `[batch, seq, d]` (already layer-normed) -> `[batch, seq, d]`; `positions`
        (`[seq]`, absolute) only place any steering."""
        width = x.shape[-1]
        hidden = nn.Dense(self.expansion * width, use_bias=self.use_bias, dtype=self.dtype,
                          kernel_init=DEFAULT_INIT, name="hidden")(x)
        hidden = steered(self, MLP_SITE, ACTIVATIONS[self.activation](hidden), positions)
        hidden = spliced(self, MLP_SITE, hidden)
        self.sow(f"neurons_{MLP_SITE}", MLP_SITE, hidden)
        return nn.Dense(width, use_bias=self.use_bias, dtype=self.dtype,
                        kernel_init=self.out_init, name="out")(hidden)
