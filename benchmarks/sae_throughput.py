"""Activations per second of the SAE training step (`crate_jax/sae/train.py`), alone and with
the model's forward pass that streams the activations in.

  python benchmarks/sae_throughput.py [--variant=gpt2] [--site=mlp] [--kind=topk] \\
      [--expansion=4] [--k=32] [--batch_size=8] [--seq_len=128] [--steps=20]

The variant's `tiny` model with random parameters (speed does not depend on them) on random
tokens; every layer's SAE of the site is updated in one step, as the `sae` stage does. Each mode
is compiled and warmed up, then timed over `--steps` steps (median). Activations per second count
one activation vector per token and layer.
"""

from __future__ import annotations

import importlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from crate_jax.model import LanguageModel, ModelConfig, neuron_width
from crate_jax.sae.model import SaeSettings, default_aux_k
from crate_jax.sae.train import initial_state, make_sae_step, make_site_capture, sae_optimizer
from crate_jax.train.sharding import make_mesh

_VARIANT = flags.DEFINE_string("variant", "gpt2", "configs/<variant>.py, at its tiny size.")
_SITE = flags.DEFINE_string("site", "mlp", "The neuron site the SAEs read.")
_KIND = flags.DEFINE_string("kind", "topk", "topk | batchtopk | relu_l1.")
_EXPANSION = flags.DEFINE_integer("expansion", 4, "Latents = expansion x the site's width.")
_K = flags.DEFINE_integer("k", 32, "Active latents per token.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Windows per step.")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per window.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per mode.")


def _median_seconds(run, steps: int) -> float:
    jax.block_until_ready(run())  # compile
    jax.block_until_ready(run())
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        jax.block_until_ready(run())
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main(argv) -> None:
    del argv
    config = importlib.import_module(f"configs.{_VARIANT.value}").get_config("tiny")
    model = LanguageModel(ModelConfig.from_mapping(config.model))
    params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    width = neuron_width(model.config, _SITE.value)
    settings = SaeSettings(kind=_KIND.value, width=_EXPANSION.value * width, k=_K.value,
                           aux_k=default_aux_k(width))
    optimizer = sae_optimizer(1e-3)
    mesh = make_mesh({"data": -1, "fsdp": 1})
    step = make_sae_step(settings, optimizer, mesh)
    capture = make_site_capture(model, _SITE.value)
    tokens = jnp.asarray(np.random.default_rng(0).integers(
        0, model.config.vocab_size, (_BATCH.value, _SEQ.value)), jnp.int32)
    activations = capture(params, tokens)
    layers, count = activations.shape[0], activations.shape[1]
    state = {"now": initial_state(jax.random.key(0), activations, settings, optimizer)}

    def sae_only():
        state["now"], metrics = step(state["now"], activations)
        return metrics

    def streamed():
        state["now"], metrics = step(state["now"], capture(params, tokens))
        return metrics

    print(f"{_VARIANT.value} tiny, site {_SITE.value} (width {width}), {layers} layers, "
          f"{_KIND.value} SAE of {settings.width} latents, k {settings.k}, {count:,} tokens per "
          f"step, on {jax.devices()[0].platform} ({jax.device_count()} device(s))")
    print("| mode | step (ms, median) | activations/s |\n|---|---:|---:|")
    for name, run in (("SAE step alone", sae_only), ("model forward + SAE step", streamed)):
        seconds = _median_seconds(run, _STEPS.value)
        print(f"| {name} | {seconds * 1e3:.1f} | {layers * count / seconds:,.0f} |")


if __name__ == "__main__":
    app.run(main)
