"""Next-token cross-entropy, the loss every variant is trained and compared on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy in nats: `logits [..., vocab]`, `targets [...]` -> `[...]`."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def next_token_loss(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats) of predicting `tokens[:, t+1]` from `logits[:, t]`.

    `logits`: `[batch, seq, vocab]`, `tokens`: `[batch, seq]`; the last position has no target.
    """
    return cross_entropy(logits[:, :-1], tokens[:, 1:]).mean()
