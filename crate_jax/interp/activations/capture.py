"""Stream held-out text through the trained model and mine records and sparsity per site/layer.

The evaluation text is the first `interp.num_sequences` windows of `interp.seq_len` tokens of the
validation split (never trained on). Each batch is one jitted forward pass that captures every
requested site; activations go straight into the per-(site, layer) miners, sparsity counters and
per-token sums of the token reference (`token_means`) and are then dropped, so memory does not grow
with the evaluation set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np

from crate_jax.atomic_files import atomic_path
from crate_jax.interp.activations.miner import RecordMiner
from crate_jax.interp.activations.records import (
    NeuronRecord,
    attach_starts,
    from_json,
    to_json,
)
from crate_jax.interp.activations.sparsity import SparsityCounter
from crate_jax.interp.activations.token_means import TokenMeans, frequent_token_ids
from crate_jax.layout import RunLayout
from crate_jax.model import LanguageModel
from crate_jax.sae.latents import SiteReader, as_reader


class InterpretabilityError(RuntimeError):
    """The evaluation cannot run (no checkpoint, too little text); says what to do."""


def evaluation_sequences(validation_tokens: np.ndarray, seq_len: int,
                         num_sequences: int) -> np.ndarray:
    """Consecutive windows `[count, seq_len]` from the start of the validation split."""
    count = min(num_sequences, validation_tokens.size // seq_len)
    if count < 1:
        raise InterpretabilityError(
            f"the validation split has {validation_tokens.size} tokens, fewer than one "
            f"interp.seq_len={seq_len} sequence; lower interp.seq_len or raise data.val_fraction")
    return np.asarray(validation_tokens[:count * seq_len], np.int32).reshape(count, seq_len)


def selected_neurons(width: int, per_layer: int, seed: int, site: str, layer: int) -> np.ndarray:
    """All neurons (`per_layer <= 0`) or a seeded sample, sorted; the same on every rerun."""
    if per_layer <= 0 or per_layer >= width:
        return np.arange(width)
    rng = np.random.default_rng([seed, layer, sum(map(ord, site))])
    return np.sort(rng.choice(width, size=per_layer, replace=False))


def _batches(sequences: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, sequences.shape[0], batch_size):
        yield np.arange(start, min(start + batch_size, sequences.shape[0])), \
            sequences[start:start + batch_size]


def mine_records(model: LanguageModel | SiteReader, params, sequences: np.ndarray,
                 sites: tuple[str, ...], interp_config, decode: Callable[[int], str],
                 layout: RunLayout) -> dict:
    """Mines records for every (site, layer) into `layout.records(site, layer)`, with the
    neurons' statistics beside them (`layout.record_statistics`). `model` may be a
    `SiteReader`, whose SAE sites are mined like the model's own.

    Returns the sparsity summary `{site: {layer: {...}}}`. One line per neuron, written only when
    the whole file is complete (temp file + rename), so a crash leaves no half file behind.
    """
    reader = as_reader(model)
    capture = jax.jit(lambda p, t: reader.apply(p, t, sites)[1])
    layers = range(reader.model.config.num_layers)
    num_sequences, seq_len = sequences.shape
    keys = [(site, layer) for site in sites for layer in layers]
    chosen = {(site, layer): selected_neurons(reader.width(site),
                                              interp_config.neurons_per_layer,
                                              interp_config.seed, site, layer)
              for site, layer in keys}
    miners = {key: RecordMiner(len(chosen[key]), seq_len, num_sequences,
                               window=interp_config.window, top_k=interp_config.top_k,
                               random_k=interp_config.random_k,
                               quantile_bins=interp_config.quantile_bins,
                               per_bin=interp_config.per_bin, seed=interp_config.seed)
              for key in chosen}
    counters = {(site, layer): SparsityCounter(reader.width(site),
                                               eps=interp_config.eps)
                for site, layer in keys}
    # The token reference's table: the most frequent ids, as many as the entries allow.
    token_means = {key: TokenMeans(frequent_token_ids(
                       sequences, max(1, interp_config.token_table_entries // len(chosen[key]))),
                       len(chosen[key]))
                   for key in keys}

    def stream(first_pass: bool) -> None:
        for indices, tokens in _batches(sequences, interp_config.batch_size):
            neurons = jax.device_get(capture(params, tokens))
            for (site, layer), miner in miners.items():
                activations = np.asarray(neurons[site][layer], np.float32)
                if first_pass:
                    counters[site, layer].observe(activations)
                    miner.observe(indices, tokens, activations[..., chosen[site, layer]])
                    token_means[site, layer].observe(tokens,
                                                     activations[..., chosen[site, layer]])
                else:
                    miner.observe_second_pass(indices, tokens,
                                              activations[..., chosen[site, layer]])

    stream(first_pass=True)
    if any(miner.needs_second_pass() for miner in miners.values()):
        stream(first_pass=False)

    for (site, layer), miner in miners.items():
        path = layout.records(site, layer)
        path.parent.mkdir(parents=True, exist_ok=True)
        indices = chosen[site, layer]
        with atomic_path(path) as temporary, open(temporary, "w") as file:
            # The miner saw only the chosen neurons, as columns 0..n-1: name them properly.
            for record in miner.neuron_records(layer, range(len(indices)), decode):
                record.neuron_id.neuron_index = int(indices[record.neuron_id.neuron_index])
                file.write(to_json(record) + "\n")
        # Where each record starts in the evaluation text (not a field of OpenAI's records).
        positions = layout.record_positions(site, layer)
        with atomic_path(positions) as temporary, open(temporary, "wb") as file:
            np.savez(file, neuron_index=indices, **miner.record_starts())
        # Per-neuron max and firing frequency (not fields of OpenAI's NeuronRecord) with the
        # moments, for the chosen neurons in file order.
        statistics = layout.record_statistics(site, layer)
        with atomic_path(statistics) as temporary, open(temporary, "wb") as file:
            np.savez(file, neuron_index=indices, **miner.neuron_statistics())
        # The token reference's sums and counts, over the evaluation text outside each neuron's
        # records.
        token_means[site, layer].write(layout.token_means(site, layer), indices,
                                       miner.covered_positions())
    return {site: {str(layer): counters[site, layer].summary() for layer in layers}
            for site in sites}


def read_records(path: Path, positions: Path | None = None) -> list[NeuronRecord]:
    """The records of one (site, layer); with `positions` (`layout.record_positions`), each
    record knows where it starts in the evaluation text (`records.attach_starts`)."""
    with open(path) as file:
        neurons = [from_json(line) for line in file if line.strip()]
    if positions is not None:
        try:
            with np.load(positions) as arrays:
                attach_starts(neurons, dict(arrays))
        except (OSError, ValueError, KeyError) as error:
            raise InterpretabilityError(
                f"{positions} does not describe the records of {path} ({error}); move "
                f"{path.parent.parent.parent} aside (its whole interp/ folder) to mine them "
                "again") from None
    return neurons


