"""The training state: everything a checkpoint must hold to resume a run exactly."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from crate_jax.model import LanguageModel


@struct.dataclass
class TrainState:
    """`step` counts optimizer updates; `dropout_key` is raw key data (uint32) so that orbax can
    store it; the key of update `s` is derived from it and `s`, never advanced in place."""

    step: jax.Array
    params: Any
    opt_state: Any
    dropout_key: jax.Array

    def as_dict(self) -> dict:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state,
                "dropout_key": self.dropout_key}

    @classmethod
    def from_dict(cls, values: dict) -> TrainState:
        return cls(**values)


def initial_state(model: LanguageModel, optimizer: optax.GradientTransformation,
                  seed: int) -> TrainState:
    """Parameters from `seed`; the same seed gives the same initial model on any device count."""
    init_key, _ = jax.random.split(jax.random.key(seed))
    tokens = jnp.zeros((1, model.config.max_len), jnp.int32)
    params = model.init(init_key, tokens)["params"]
    return state_from_params(params, optimizer, seed)


def state_from_params(params: Any, optimizer: optax.GradientTransformation, seed: int,
                      step: int = 0) -> TrainState:
    """The state of a run of `seed` at `step` around given parameters: fresh optimizer moments
    and the dropout key such a run starts with. An imported model (`crate_jax.convert`) becomes
    a checkpoint that training continues from, as a fine-tuning run."""
    _, dropout_key = jax.random.split(jax.random.key(seed))
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      dropout_key=jax.random.key_data(dropout_key))


def abstract_train_state(model: LanguageModel,
                         optimizer: optax.GradientTransformation) -> TrainState:
    """The state's shapes and dtypes, without allocating it: what a checkpoint is restored into
    and what shardings are laid over. Shapes do not depend on the seed."""
    return jax.eval_shape(lambda: initial_state(model, optimizer, seed=0))
