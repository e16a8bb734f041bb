"""The causal language model that hosts every variant of the ablation study.

Per layer (pre-LN): `x = x + Attention(LN(x))`, then the sparse block:
- `ista`: `x = ISTA(LN(x))`, no residual (CRATE), or `x + ISTA(LN(x))` with `ista_residual`;
- `mlp`:  `x = x + MLP(LN(x))` (GPT-2);
- `none`: nothing (attention-only layers).
Token and learned position embeddings in, final LN, output head tied to the token embedding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from crate_jax.model.attention import (
    CACHE,
    MultiHeadSelfAttention,
    SubspaceSelfAttention,
    attention_impl_on_this_machine,
)
from crate_jax.model.config import ModelConfig
from crate_jax.model.initializers import DEFAULT_INIT, residual_output_init
from crate_jax.model.ista import SparseCodingBlock
from crate_jax.model.mlp import FeedForwardBlock
from crate_jax.model.steering import spliced, steered

RESID_SITE = "resid"
POSITION_EMBEDDING = "position_embedding"

_ATTENTION_MODULES = {"mssa": SubspaceSelfAttention, "mhsa": MultiHeadSelfAttention}


class Layer(nn.Module):
    """One layer: attention inside a residual, then the configured sparse block."""

    config: ModelConfig

    def layer_norm(self, name: str) -> nn.LayerNorm:
        return nn.LayerNorm(epsilon=self.config.layer_norm_epsilon, use_bias=self.config.use_bias,
                            dtype=self.config.compute_dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, positions: jax.Array | None = None,
                 decode: bool = False) -> jax.Array:
        """`x`: the residual stream `[batch, seq, d]` -> the stream after this layer.
        `positions` (`[seq]`, absolute) and `decode` as in `LanguageModel`."""
        config = self.config
        out_init = residual_output_init(config.num_layers)
        dropout = nn.Dropout(config.dropout_rate, deterministic=not train)

        attention = _ATTENTION_MODULES[config.attention](
            num_heads=config.num_heads, use_bias=config.use_bias, dtype=config.compute_dtype,
            out_init=out_init, attention_impl=config.attention_impl, cache_length=config.max_len,
            name="attention")
        x = x + dropout(attention(self.layer_norm("attention_norm")(x), positions, decode))

        if config.sparse_block == "ista":
            sparse = SparseCodingBlock(
                expansion=config.ista_expansion, num_steps=config.ista_steps,
                step_size=config.ista_step_size, threshold=config.ista_threshold,
                dtype=config.compute_dtype, name="ista")(self.layer_norm("ista_norm")(x), positions)
            x = x + sparse if config.ista_residual else sparse
        elif config.sparse_block == "mlp":
            mlp = FeedForwardBlock(
                expansion=config.mlp_expansion, activation=config.mlp_activation,
                use_bias=config.use_bias, dtype=config.compute_dtype, out_init=out_init, name="mlp")
            x = x + dropout(mlp(self.layer_norm("mlp_norm")(x), positions))

        x = spliced(self, RESID_SITE, steered(self, RESID_SITE, x, positions))
        self.sow(f"neurons_{RESID_SITE}", RESID_SITE, x)
        return x


class LanguageModel(nn.Module):
    """tokens `[batch, seq]` (int) -> next-token logits `[batch, seq, vocab]` (float32).

    With `decode=True` (generation, `cache` mutable) the tokens continue the ones of earlier
    calls: they sit at absolute positions from the cache's `position` on, and attention reads
    the earlier keys and values from the cache. A `steering` collection, if given, sets or scales
    neurons (`steering.py`). With `head=False` it returns the final LayerNorm's output `[batch,
    seq, d]` instead, for a loss that applies the tied head itself (`chunked_head.py`).
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False, decode: bool = False,
                 head: bool = True) -> jax.Array:
        config = self.config
        seq = tokens.shape[-1]
        if seq > config.max_len:
            raise ValueError(f"sequence length {seq} exceeds model.max_len={config.max_len}")
        positions = jnp.arange(seq)
        if decode:
            start = self.variable(CACHE, "position", lambda: jnp.zeros((), jnp.int32))
            positions = start.value + positions
            start.value = start.value + seq
        token_embedding = nn.Embed(config.vocab_size, config.embed_dim, dtype=config.compute_dtype,
                                   embedding_init=DEFAULT_INIT, name="token_embedding")
        position_embedding = nn.Embed(config.max_len, config.embed_dim, dtype=config.compute_dtype,
                                      embedding_init=DEFAULT_INIT, name=POSITION_EMBEDDING)
        x = token_embedding(tokens) + position_embedding(positions)
        x = nn.Dropout(config.dropout_rate, deterministic=not train)(x)
        for index in range(config.num_layers):
            x = Layer(config, name=f"layer_{index}")(x, train=train, positions=positions,
                                                     decode=decode)
        x = nn.LayerNorm(epsilon=config.layer_norm_epsilon, use_bias=config.use_bias,
                         dtype=config.compute_dtype, name="final_norm")(x)
        if not head:  # the final hidden states, for a loss that applies the head itself
            return x
        # Tied head; logits in float32 so the softmax cross-entropy is accurate under bfloat16.
        return token_embedding.attend(x).astype(jnp.float32)


def model_from_config(config) -> LanguageModel:
    """The model an experiment config (`configs/*.py`) describes; its `model` keys are checked,
    and a forced `attention_impl='cudnn'` against this machine's device (before any work)."""
    settings = ModelConfig.from_mapping(config.model)
    attention_impl_on_this_machine(settings.attention_impl, settings.compute_dtype,
                                   settings.head_dim)
    return LanguageModel(settings)
