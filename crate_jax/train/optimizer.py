"""AdamW with warmup + cosine decay and global-norm clipping, as in GPT-2-style LM training."""

from __future__ import annotations

from typing import Any

import jax
import optax


def learning_rate_schedule(train_config) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then cosine decay to `min_learning_rate`."""
    peak = train_config.learning_rate
    warmup = min(train_config.warmup_steps, train_config.num_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(train_config.num_steps, warmup + 1),
        end_value=peak * train_config.min_learning_rate_ratio)


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices and embeddings only (ndim >= 2), never on biases or LN scales."""
    return jax.tree_util.tree_map(lambda leaf: leaf.ndim >= 2, params)


def make_optimizer(train_config) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(train_config.grad_clip),
        optax.adamw(learning_rate_schedule(train_config), b1=train_config.b1,
                    b2=train_config.b2, weight_decay=train_config.weight_decay, mask=decay_mask),
    )
