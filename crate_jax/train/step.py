"""The jitted, sharded train and eval steps (SPMD over one `data` mesh axis).

Batches are split over every device of the mesh; parameters and optimizer state are replicated.
The same code runs on 1 CPU device, on 8 forced host devices, on a GPU node or a TPU pod slice,
where `jax.make_array_from_process_local_data` assembles each host's rows into one global array.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from crate_jax.losses import cross_entropy
from crate_jax.model import LanguageModel
from crate_jax.train.state import TrainState

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def train_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Train batches are `[accumulation_steps, micro_batch, seq + 1]`, split over micro_batch."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def eval_batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_rows: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """This process's rows as its part of the global, sharded batch."""
    return jax.make_array_from_process_local_data(sharding, local_rows)


def _window_loss(model: LanguageModel, params, windows: jax.Array, train: bool,
                 dropout_key: jax.Array | None = None) -> jax.Array:
    """Mean next-token loss of `windows [batch, seq + 1]`: inputs are all but the last token."""
    rngs = {"dropout": dropout_key} if dropout_key is not None else None
    logits = model.apply({"params": params}, windows[:, :-1], train=train, rngs=rngs)
    return cross_entropy(logits, windows[:, 1:]).mean()


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
            lambda params, windows, key: _window_loss(model, params, windows, True, key))

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
        logits = model.apply({"params": params}, windows[:, :-1])
        return cross_entropy(logits, windows[:, 1:]).sum()

    return jax.jit(eval_step, in_shardings=(params_sharding, eval_batch_sharding(mesh)),
                   out_shardings=replicated(mesh))
