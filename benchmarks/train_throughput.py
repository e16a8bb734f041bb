"""Training throughput per variant, on whatever devices JAX sees: compile time, step time,
tokens/s, model FLOPs per token, MFU and peak device memory.

    python benchmarks/train_throughput.py --size=tiny --seq_len=256 --batch_size=16 \
        --json_out=throughput.json

Times the same jitted, sharded step that `crate_jax.main` runs (random tokens, so no data
preparation and no tensorflow_datasets). The step is lowered and compiled explicitly, so compile
time is measured on its own; warm-up steps then absorb first-run allocation before the timed
steps. Prints a markdown table; `--json_out` also writes the numbers with the date, machine,
versions and the exact command, so a figure can be reproduced and compared on the same device.
benchmarks/README.md explains each column and holds measured tables.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import jax
import jaxlib
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `configs` from any cwd

from crate_jax.atomic_files import write_json_atomically  # noqa: E402
from crate_jax.model import ModelConfig, model_from_config  # noqa: E402
from crate_jax.model.flops import model_flops_per_token, model_flops_utilization  # noqa: E402
from crate_jax.model.parameters import count_parameters  # noqa: E402
from crate_jax.train.optimizer import learning_rate_schedule, make_optimizer  # noqa: E402
from crate_jax.train.sharding import (  # noqa: E402
    global_batch,
    make_mesh,
    state_shardings,
    train_batch_sharding,
)
from crate_jax.train.state import abstract_train_state, initial_state  # noqa: E402
from crate_jax.train.step import make_train_step  # noqa: E402
from crate_jax.versions import package_versions  # noqa: E402

ALL_VARIANTS = ["crate", "no_ista", "standard_attention", "ista_to_mlp", "gpt2"]

_VARIANTS = flags.DEFINE_list("variants", ALL_VARIANTS, "Config files under configs/.")
_SIZE = flags.DEFINE_string("size", "tiny", "Size preset.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Override train.batch_size.")
_SEQ = flags.DEFINE_integer("seq_len", None, "Override train.seq_len.")
_DTYPE = flags.DEFINE_string("dtype", None, "Override model.dtype (float32 | bfloat16).")
_FSDP = flags.DEFINE_integer("fsdp", None, "Override mesh.fsdp (mesh.data takes the rest).")
_ATTENTION_IMPL = flags.DEFINE_string("attention_impl", None,
                                      "Override model.attention_impl (auto | xla | cudnn | "
                                      "blockwise).")
_HEAD_IMPL = flags.DEFINE_string("head_impl", None,
                                 "Override model.head_impl (logits | chunked).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results and provenance here.")
flags.register_validator("steps", lambda steps: steps >= 1, "--steps must be at least 1")
flags.register_validator("warmup", lambda steps: steps >= 0, "--warmup must be at least 0")

# Environment variables that change what a run measures, so they belong to its command.
_COMMAND_ENVIRONMENT = ("JAX_PLATFORMS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES")


def peak_memory_bytes() -> int | None:
    """The highest `peak_bytes_in_use` over local devices, or None where the backend keeps no
    memory statistics (the CPU backend returns None). It is the peak since the process started,
    so in a multi-variant run it is the running maximum over the variants measured so far."""
    peaks = [(device.memory_stats() or {}).get("peak_bytes_in_use")
             for device in jax.local_devices()]
    peaks = [peak for peak in peaks if peak is not None]
    return max(peaks) if peaks else None


def step_memory_bytes(compiled) -> int | None:
    """What XLA plans for one compiled step (arguments + outputs + temporaries - donated
    buffers), per device: unlike the device peak, it belongs to this variant alone."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def measure(variant: str) -> dict:
    config = importlib.import_module(f"configs.{variant}").get_config(_SIZE.value)
    if _BATCH.value:
        config.train.batch_size = _BATCH.value
    if _SEQ.value:
        config.train.seq_len = _SEQ.value
    if _DTYPE.value:
        config.model.dtype = _DTYPE.value
    if _FSDP.value:
        config.mesh.update(data=-1, fsdp=_FSDP.value)
    if _ATTENTION_IMPL.value:
        config.model.attention_impl = _ATTENTION_IMPL.value
    if _HEAD_IMPL.value:
        config.model.head_impl = _HEAD_IMPL.value
    train = config.train
    model = model_from_config(config)
    mesh = make_mesh(config.mesh)
    optimizer = make_optimizer(train)
    abstract = abstract_train_state(model, optimizer)
    sharding = state_shardings(abstract, mesh)
    state = jax.jit(lambda: initial_state(model, optimizer, config.seed),
                    out_shardings=sharding)()
    step = make_train_step(model, optimizer, learning_rate_schedule(train), mesh, sharding)
    rng = np.random.default_rng(0)
    layout = (train.grad_accum_steps, train.batch_size // train.grad_accum_steps,
              train.seq_len + 1)
    batch = global_batch(rng.integers(0, config.model.vocab_size, layout, dtype=np.int32),
                         train_batch_sharding(mesh))

    started = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - started

    for _ in range(_WARMUP.value):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    durations = []
    for _ in range(_STEPS.value):
        started = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        durations.append(time.perf_counter() - started)
    median = statistics.median(durations)
    tokens_per_second = train.batch_size * train.seq_len / median

    flops = model_flops_per_token(ModelConfig.from_mapping(config.model), train.seq_len)
    device = jax.devices()[0]
    return {"variant": variant, "size": _SIZE.value, "batch_size": train.batch_size,
            "seq_len": train.seq_len, "dtype": config.model.dtype, "mesh": dict(mesh.shape),
            "model_config": config.model.to_dict(),  # every key, attention_impl included
            "parameters": count_parameters(state.params),
            "compile_seconds": compile_seconds, "warmup_steps": _WARMUP.value,
            "timed_steps": _STEPS.value, "step_seconds": durations,
            "median_seconds_per_step": median, "tokens_per_second": tokens_per_second,
            "tokens_per_second_per_device": tokens_per_second / jax.device_count(),
            "model_flops_per_token": flops,
            "mfu": model_flops_utilization(tokens_per_second, flops["training"],
                                           device.device_kind, jax.device_count(),
                                           config.model.dtype),
            "peak_memory_bytes": peak_memory_bytes(),
            "step_memory_bytes": step_memory_bytes(compiled)}


def machine() -> dict:
    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            "cpu_count": os.cpu_count(), "host": platform.machine(),
            "load_average_at_start": list(os.getloadavg())}


def exact_command() -> str:
    """The command line as run, with the environment variables that change the measurement."""
    environment = [f"{name}={shlex.quote(os.environ[name])}" for name in _COMMAND_ENVIRONMENT
                   if name in os.environ]
    return " ".join([*environment, shlex.join(["python", *sys.argv])])


def mebibytes(value: int | None) -> str:
    """A memory cell of a table (also `paper_side_by_side.py`'s)."""
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def mfu_cell(mfu: float | None, platform_name: str) -> str:
    """An MFU cell of a table (also `paper_side_by_side.py`'s), saying why one is missing."""
    if mfu is not None:
        return f"{100 * mfu:.1f}%"
    return "n/a on cpu" if platform_name == "cpu" else "n/a (no peak known)"


def markdown_table(results: list[dict], platform_name: str) -> str:
    lines = ["| variant | params | compile (s) | step (ms, median) | tokens/s "
             "| train FLOPs/token | MFU | peak memory | step memory (XLA) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results:
        lines.append(
            f"| {row['variant']} | {row['parameters'] / 1e6:.2f}M | {row['compile_seconds']:.1f} "
            f"| {1e3 * row['median_seconds_per_step']:.1f} | {row['tokens_per_second']:,.0f} "
            f"| {row['model_flops_per_token']['training'] / 1e6:,.1f}M "
            f"| {mfu_cell(row['mfu'], platform_name)} "
            f"| {mebibytes(row['peak_memory_bytes'])} | {mebibytes(row['step_memory_bytes'])} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    started_at = datetime.datetime.now(datetime.UTC)
    record = {"date": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"), "command": exact_command(),
              "machine": machine(),
              "versions": {**package_versions(), "jaxlib": jaxlib.__version__},
              "results": []}
    for variant in _VARIANTS.value:
        record["results"].append(measure(variant))
        print(f"measured {variant}", file=sys.stderr, flush=True)
    print(markdown_table(record["results"], record["machine"]["platform"]), flush=True)
    if _JSON_OUT.value:
        out = Path(_JSON_OUT.value)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(out, record)


if __name__ == "__main__":
    app.run(main)
