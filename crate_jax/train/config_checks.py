"""The training stage's up-front checks: the model, data and training settings, and the device
mesh, each refused with one line before data preparation or compilation.

The interp stage restores the model with these same settings, so the entry (`input_checks`)
runs them for every stage; the mesh only matters where training runs.
"""

from __future__ import annotations

import jax

from crate_jax.config_rules import COUNT, SEED, Rule, check_rules, integer, number
from crate_jax.data.token_arrays import check_data_settings
from crate_jax.model import ConfigError, model_from_config
from crate_jax.train.sharding import mesh_shape

RUN_RULES: dict[str, Rule] = {
    "seed": SEED,
    "data.val_fraction": number(0, 1, low_open=True, high_open=True),
    "train.num_steps": COUNT,
    "train.batch_size": COUNT,
    "train.grad_accum_steps": COUNT,
    "train.seq_len": COUNT,
    "train.learning_rate": number(0, low_open=True),
    "train.warmup_steps": integer(0),
    "train.min_learning_rate_ratio": number(0, 1),
    "train.weight_decay": number(0),
    "train.b1": number(0, 1, high_open=True),
    "train.b2": number(0, 1, high_open=True),
    "train.grad_clip": number(0, low_open=True),
    "train.log_every": COUNT,
    "train.eval_every": COUNT,
    "train.eval_batches": COUNT,
    "train.checkpoint_every": COUNT,
    "train.keep_checkpoints": COUNT,
}


def check_train_config(config, *, mesh: bool = True):
    """Raises `ConfigError` (`TokenizerError` for the vocabulary) for the first value of
    `config` a run cannot use; returns the model. `mesh=False` leaves the device mesh unchecked
    (a stage that only reads a checkpoint puts it on whatever devices it has)."""
    model = model_from_config(config)  # the model section, with "did you mean" for typos
    check_rules(config, RUN_RULES)
    check_data_settings(config.data, model.config.vocab_size)
    _check_layout(config)
    if mesh:
        check_mesh(config, jax.device_count())
    return model


def _check_layout(config) -> None:
    """The batch must split into micro-batches without remainder."""
    train = config.train
    if train.seq_len > config.model.max_len:
        raise ConfigError(f"train.seq_len={train.seq_len} exceeds model.max_len="
                          f"{config.model.max_len}; lower train.seq_len")
    if train.batch_size % train.grad_accum_steps:
        raise ConfigError(f"train.batch_size={train.batch_size} is not divisible by "
                          f"train.grad_accum_steps={train.grad_accum_steps}")


def check_mesh(config, device_count: int) -> None:
    """`config.mesh` must lay out exactly the devices of the run, and each micro-batch (of
    training and of evaluation alike) split evenly over all of them, as both mesh axes split it."""
    data, fsdp = mesh_shape(config.mesh, device_count)
    train = config.train
    micro_batch = train.batch_size // train.grad_accum_steps
    if micro_batch % (data * fsdp):
        raise ConfigError(
            f"the micro-batch (train.batch_size / train.grad_accum_steps = {train.batch_size} / "
            f"{train.grad_accum_steps} = {micro_batch}) must be divisible by the {device_count} "
            f"devices of the mesh (mesh.data={data} x mesh.fsdp={fsdp}), which all take an equal "
            "share of it; change train.batch_size or train.grad_accum_steps")
