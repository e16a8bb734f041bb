"""Next-token cross-entropy, the loss every variant is trained and compared on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def next_token_loss(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats) of predicting `tokens[:, t+1]` from `logits[:, t]`.

    `logits`: `[batch, seq, vocab]`, `tokens`: `[batch, seq]`; the last position has no target.
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1].astype(jnp.float32), tokens[:, 1:])
    return losses.mean()
