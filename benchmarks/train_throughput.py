"""Tokens per second of one training step, per variant, on whatever devices JAX sees.

    python benchmarks/train_throughput.py --variants=crate,gpt2 --size=tiny --steps=20

Times the same jitted, sharded step that `crate_jax.main` runs (random tokens, so no data
preparation), after warm-up steps that absorb compilation. Prints one JSON line per variant with
the config, device and versions, so a figure can be reproduced and compared on the same device.
"""

from __future__ import annotations

import importlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `configs` from any cwd

from crate_jax.model import model_from_config  # noqa: E402
from crate_jax.model.parameters import count_parameters  # noqa: E402
from crate_jax.train.optimizer import learning_rate_schedule, make_optimizer  # noqa: E402
from crate_jax.train.state import abstract_train_state, initial_state  # noqa: E402
from crate_jax.train.step import (  # noqa: E402
    global_batch,
    make_mesh,
    make_train_step,
    replicated,
    train_batch_sharding,
)

_VARIANTS = flags.DEFINE_list("variants", ["crate", "gpt2"], "Config files under configs/.")
_SIZE = flags.DEFINE_string("size", "tiny", "Size preset.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Override train.batch_size.")
_SEQ = flags.DEFINE_integer("seq_len", None, "Override train.seq_len.")
_DTYPE = flags.DEFINE_string("dtype", None, "Override model.dtype (float32 | bfloat16).")


def measure(variant: str) -> dict:
    config = importlib.import_module(f"configs.{variant}").get_config(_SIZE.value)
    if _BATCH.value:
        config.train.batch_size = _BATCH.value
    if _SEQ.value:
        config.train.seq_len = _SEQ.value
    if _DTYPE.value:
        config.model.dtype = _DTYPE.value
    train = config.train
    model = model_from_config(config)
    mesh = make_mesh()
    optimizer = make_optimizer(train)
    abstract = abstract_train_state(model, optimizer)
    sharding = jax.tree_util.tree_map(lambda _: replicated(mesh), abstract)
    state = jax.jit(lambda: initial_state(model, optimizer, config.seed),
                    out_shardings=sharding)()
    step = make_train_step(model, optimizer, learning_rate_schedule(train), mesh, sharding)
    rng = np.random.default_rng(0)
    layout = (train.grad_accum_steps, train.batch_size // train.grad_accum_steps,
              train.seq_len + 1)
    batch = global_batch(rng.integers(0, config.model.vocab_size, layout, dtype=np.int32),
                         train_batch_sharding(mesh))
    for _ in range(_WARMUP.value):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    durations = []
    for _ in range(_STEPS.value):
        started = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        durations.append(time.perf_counter() - started)
    median = statistics.median(durations)
    tokens = train.batch_size * train.seq_len
    return {"variant": variant, "size": _SIZE.value, "batch_size": train.batch_size,
            "seq_len": train.seq_len, "dtype": config.model.dtype,
            "parameters": count_parameters(state.params),
            "median_seconds_per_step": median, "tokens_per_second": tokens / median,
            "tokens_per_second_per_device": tokens / median / jax.device_count(),
            "device": str(jax.devices()[0].device_kind), "device_count": jax.device_count(),
            "jax": jax.__version__, "python": platform.python_version(),
            "timed_steps": _STEPS.value}


def main(argv: list[str]) -> None:
    del argv
    for variant in _VARIANTS.value:
        print(json.dumps(measure(variant)), flush=True)


if __name__ == "__main__":
    app.run(main)
