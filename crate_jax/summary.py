"""Describe a variant without training it: settings, parameter counts and neuron sites.

    python -m crate_jax.summary --config=configs/gpt2.py:2l --config.model.num_layers=3

Parameters are counted from shapes alone (`jax.eval_shape`), so even size `b` takes a second.
"""

from __future__ import annotations

from absl import app, flags

from crate_jax.cli import define_config_flag, parse_flags
from crate_jax.model import ConfigError, model_from_config, neuron_sites, neuron_width
from crate_jax.model.parameters import abstract_params, count_parameters

_CONFIG = define_config_flag()
flags.mark_flags_as_required(["config"])


def describe(config) -> str:
    """A few readable lines about the model `config` describes."""
    model = model_from_config(config)
    settings = model.config
    params = abstract_params(settings)
    paper_count = count_parameters(params)
    total = count_parameters(params, exclude=())
    sites = ", ".join(f"{site} {settings.num_layers} x {neuron_width(settings, site)}"
                      for site in neuron_sites(settings))
    return "\n".join([
        f"variant     {config.variant} (size {config.size})",
        f"model       attention={settings.attention} sparse_block={settings.sparse_block} "
        f"use_bias={settings.use_bias} layers={settings.num_layers} d={settings.embed_dim} "
        f"heads={settings.num_heads} vocab={settings.vocab_size} context={settings.max_len}",
        f"parameters  {paper_count:,} ({paper_count / 1e6:.2f}M, all but position embeddings, "
        f"as the paper counts); {total:,} in all",
        f"neurons     {sites} (layers x width)",
    ])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        print(describe(_CONFIG.value))
    except ConfigError as error:
        raise app.UsageError(str(error)) from error


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
