"""Tokens per second of `generate_tokens` with and without the key-value cache.

  python benchmarks/generation_speed.py [--variant=crate] [--prompt_tokens=16] [--new_tokens=64]

The variant's `tiny` model (random parameters: speed does not depend on them), one sequence,
greedy. Each mode runs once to compile, then is timed over `--repeats` runs (median). Without
the cache every token reruns the whole padded sequence, so the gap grows with the length.
"""

from __future__ import annotations

import importlib
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from crate_jax.generation import generate_tokens
from crate_jax.model import LanguageModel, ModelConfig

_VARIANT = flags.DEFINE_string("variant", "crate", "configs/<variant>.py, at its tiny size.")
_PROMPT = flags.DEFINE_integer("prompt_tokens", 16, "Prompt length in tokens.")
_NEW = flags.DEFINE_integer("new_tokens", 64, "Tokens to generate.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per mode.")


def main(argv) -> None:
    del argv
    settings = importlib.import_module(f"configs.{_VARIANT.value}").get_config("tiny").model
    model = LanguageModel(ModelConfig.from_mapping(settings))
    params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    prompt = list(range(1, _PROMPT.value + 1))
    print(f"{_VARIANT.value} tiny on {jax.devices()[0].platform}: {_PROMPT.value}-token prompt, "
          f"{_NEW.value} new tokens, greedy")
    for use_cache in (True, False):
        def run(use_cache=use_cache):
            return generate_tokens(model, params, prompt, _NEW.value, temperature=0.0,
                                   use_cache=use_cache)
        started = time.perf_counter()
        run()
        first = time.perf_counter() - started
        seconds = []
        for _ in range(_REPEATS.value):
            started = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - started)
        median = statistics.median(seconds)
        print(f"{'with' if use_cache else 'without':>7} cache: {_NEW.value / median:8.1f} "
              f"tokens/s (first run, compiling: {first:.2f} s)")


if __name__ == "__main__":
    app.run(main)
