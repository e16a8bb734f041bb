"""The jitted, sharded train and eval steps (SPMD over the `data` x `fsdp` mesh).

Batches are split over every device of the mesh; the state is laid out by
`crate_jax/train/sharding.py` (large parameters and their optimizer moments split over `fsdp`,
the rest replicated). Each step is one `jax.jit` with those shardings as its in- and out-
shardings, so XLA's partitioner places the collectives. The same code runs on 1 CPU device, on 8
forced host devices, on a GPU node or a TPU pod slice.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from crate_jax.losses import cross_entropy
from crate_jax.model import LanguageModel
from crate_jax.model.chunked_head import chunked_next_token_loss, head_impl_on_this_machine
from crate_jax.train.sharding import batch_sharding, replicated, train_batch_sharding
from crate_jax.train.state import TrainState


def _token_losses(model: LanguageModel, params, windows: jax.Array, mesh: Mesh,
                  train: bool = False, dropout_key: jax.Array | None = None) -> jax.Array:
    """Next-token losses `[batch, seq]` of `windows [batch, seq + 1]`: inputs are all but the
    last token.

    The logits `[batch, seq, vocab]` are held split over the batch, as the windows are. Left to
    itself, XLA splits the tied head over the vocabulary (the token embedding is split so) and
    gathers the whole micro-batch's hidden states onto every device, which does not shrink as
    devices are added; held so, it gathers the embedding instead. XLA's memory analysis of a
    size-`s` step on 8 host devices at fsdp=8, 8 windows of 256 tokens per device: 2.85 -> 2.18
    GiB per device (GPT-2), 3.20 -> 2.53 GiB (CRATE); at 2 windows, 0.84 -> 0.78 GiB; at 1
    window it costs 0.42 -> 0.51 GiB. Without fsdp nothing changes.
    """
    rngs = {"dropout": dropout_key} if dropout_key is not None else None
    logits = model.apply({"params": params}, windows[:, :-1], train=train, rngs=rngs)
    logits = jax.lax.with_sharding_constraint(logits, batch_sharding(mesh))
    return cross_entropy(logits, windows[:, 1:])


def _mean_train_loss(model: LanguageModel, params, windows: jax.Array, mesh: Mesh,
                     dropout_key: jax.Array) -> jax.Array:
    """Mean next-token loss of `windows [batch, seq + 1]` in training mode, computed as
    `model.head_impl` says: the same function either way (`chunked_head.py`)."""
    if head_impl_on_this_machine(model.config.head_impl) == "logits":
        return _token_losses(model, params, windows, mesh, True, dropout_key).mean()
    hidden = model.apply({"params": params}, windows[:, :-1], train=True,
                         rngs={"dropout": dropout_key}, head=False)
    hidden = jax.lax.with_sharding_constraint(hidden, batch_sharding(mesh))
    return chunked_next_token_loss(hidden, params["token_embedding"]["embedding"], windows[:, 1:])


def make_train_step(model: LanguageModel, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: Mesh, state_sharding,
                    ) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict]]:
    """`(state, batch [accum, micro, seq + 1]) -> (next state, metrics)`, jitted and donating.

    Micro-batches are accumulated with `lax.scan` inside the step, so gradient accumulation is one
    compiled program and the averaged gradient equals that of the whole batch.
    """

    def train_step(state: TrainState, batch: jax.Array) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)
        grad_fn = jax.value_and_grad(
            lambda params, windows, key: _mean_train_loss(model, params, windows, mesh, key))

        def accumulate(carry, indexed_windows):
            index, windows = indexed_windows
            loss, grads = grad_fn(state.params, windows, jax.random.fold_in(step_key, index))
            loss_sum, grad_sum = carry
            return (loss_sum + loss, jax.tree_util.tree_map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        steps = batch.shape[0]
        (loss_sum, grad_sum), _ = jax.lax.scan(
            accumulate, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(steps), batch))
        loss = loss_sum / steps
        grads = jax.tree_util.tree_map(lambda g: g / steps, grad_sum)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # The L2 norm over every leaf, before clipping (what `clip_by_global_norm` clips).
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": schedule(state.step)}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return jax.jit(train_step, in_shardings=(state_sharding, train_batch_sharding(mesh)),
                   out_shardings=(state_sharding, replicated(mesh)), donate_argnums=0)


def make_eval_step(model: LanguageModel, mesh: Mesh, params_sharding,
                   ) -> Callable[[object, jax.Array], jax.Array]:
    """`(params, windows [batch, seq + 1]) -> summed next-token loss (nats)` over all tokens."""

    def eval_step(params, windows: jax.Array) -> jax.Array:
        return _token_losses(model, params, windows, mesh).sum()

    return jax.jit(eval_step, in_shardings=(params_sharding, batch_sharding(mesh)),
                   out_shardings=replicated(mesh))
