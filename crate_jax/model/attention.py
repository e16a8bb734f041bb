"""Causal self-attention in the two forms the ablation compares.

`SubspaceSelfAttention` is CRATE's MSSA: one projection U per head serves as query, key and value,
so each head compresses tokens against its own subspace. `MultiHeadSelfAttention` is GPT-2's,
with separate query, key and value projections. Both share the attention core and output
projection, so with Wq = Wk = Wv = U the two are the same function (a test checks this), and the
ablation changes exactly one thing.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from crate_jax.model.initializers import DEFAULT_INIT

ATTN_SITE = "attn"


def causal_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """Softmax attention with a causal mask and scale 1/sqrt(head_dim).

    Shapes are `[batch, seq, heads, head_dim]` in and out. `jax.nn.dot_product_attention`
    computes the softmax in float32 even for bfloat16 inputs and can use fused kernels on GPU.
    """
    return jax.nn.dot_product_attention(query, key, value, is_causal=True)


class _CausalSelfAttention(nn.Module):
    """Shared core: heads -> captured `attn` neurons -> output projection with optional bias.

    Subclasses only say how query, key and value are projected from the input.
    """

    num_heads: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    out_init: nn.initializers.Initializer = DEFAULT_INIT

    def project_heads(self, x: jax.Array, name: str, use_bias: bool) -> jax.Array:
        """A Dense map `[batch, seq, d] -> [batch, seq, heads, head_dim]`."""
        head_dim = x.shape[-1] // self.num_heads
        return nn.DenseGeneral((self.num_heads, head_dim), use_bias=use_bias, dtype=self.dtype,
                               kernel_init=DEFAULT_INIT, name=name)(x)

    def query_key_value(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """`x`: `[batch, seq, d]` (already layer-normed) -> `[batch, seq, d]`."""
        batch, seq, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads={self.num_heads}")
        query, key, value = self.query_key_value(x)
        heads = causal_attention(query, key, value)
        # Per-head outputs before mixing, concatenated over heads: `[batch, seq, d]`.
        self.sow(f"neurons_{ATTN_SITE}", ATTN_SITE, heads.reshape(batch, seq, width))
        return nn.DenseGeneral(width, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype,
                               kernel_init=self.out_init, name="out")(heads)


class SubspaceSelfAttention(_CausalSelfAttention):
    """MSSA: the bias-free projection U (`subspace`) is used as query, key and value."""

    def query_key_value(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        projected = self.project_heads(x, "subspace", use_bias=False)
        return projected, projected, projected


class MultiHeadSelfAttention(_CausalSelfAttention):
    """Standard multi-head self-attention (GPT-2): separate query, key and value projections."""

    def query_key_value(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        return tuple(self.project_heads(x, name, use_bias=self.use_bias)
                     for name in ("query", "key", "value"))
