"""Held-out means disjoint: no token position a split scores was in a record its explanation saw.

Records are windows of sequences; two records of one sequence share tokens. The check needs to
know where each record came from, so the miner is fed token ids that name their own position
(`sequence * T + position`) and decoded back to it; the activations are the real thing (a
synthetic site of realistic shape, and a trained tiny model's neurons).
"""

import json

import jax
import numpy as np

from configs import crate
from crate_jax.interp.activations.miner import RECORDS_VERSION, RecordMiner
from crate_jax.interp.activations.records import ActivationRecord, NeuronRecord
from crate_jax.interp.explanations.splits import (
    ANTHROPIC_SPLIT,
    OPENAI_SPLITS,
    RECORD_PROTOCOLS,
    explanation_records,
    held_out_records,
    split_groups,
)

INTERP = crate.get_config().interp  # the default window, top_k, random_k and bins


def mined_records(activations: np.ndarray, batch_size: int = 16) -> list[NeuronRecord]:
    """A real `RecordMiner` over `activations` `[S, T, N]` with the default interp settings; each
    token's text is its position `sequence * T + position`."""
    sequences, length, neurons = activations.shape
    tokens = np.arange(sequences * length).reshape(sequences, length)
    miner = RecordMiner(neurons, length, sequences, window=INTERP.window, top_k=INTERP.top_k,
                        random_k=INTERP.random_k, quantile_bins=INTERP.quantile_bins,
                        per_bin=INTERP.per_bin, seed=INTERP.seed)
    for observe in (miner.observe, miner.observe_second_pass):
        for start in range(0, sequences, batch_size):
            rows = np.arange(start, min(start + batch_size, sequences))
            observe(rows, tokens[rows], activations[rows])
    return list(miner.neuron_records(0, range(neurons), str))


def positions(records: list[ActivationRecord]) -> set[int]:
    return {int(token) for record in records for token in record.tokens}


def leaks(neurons: list[NeuronRecord]) -> dict[tuple[str, str], int]:
    """Per (interp.protocol, split): held-out positions inside the explanation's records, summed
    over neurons. Asserts that every split scores something, so zero is not vacuous."""
    counts = {}
    for record_protocol in RECORD_PROTOCOLS:
        for protocol, splits in (("openai", OPENAI_SPLITS), ("anthropic", (ANTHROPIC_SPLIT,))):
            for split in splits:
                total, scored = 0, 0
                for neuron in neurons:
                    seen = positions(explanation_records(neuron, protocol, record_protocol))
                    groups = held_out_records(neuron, protocol, record_protocol)
                    held_out = positions([r for group in split_groups()[split]
                                          for r in groups[group]])
                    total += len(held_out & seen)
                    scored += len(held_out)
                assert scored > 0, (record_protocol, split)
                counts[record_protocol, split] = total
    return counts


def synthetic_site(sequences: int = 128, length: int = 128, neurons: int = 32,
                   seed: int = 0) -> np.ndarray:
    """`[S, T, N]` sparse, bursty activations: a ReLU of noise plus per-sequence bumps, so that
    each neuron's top sequences differ and its quantile bins are populated."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((sequences, length, neurons)) - 1.0
    bump = rng.exponential(1.0, (sequences, 1, neurons)) * (rng.random((sequences, length,
                                                                         neurons)) < 0.05)
    return np.maximum(noise + 3 * bump, 0).astype(np.float32)


def test_no_held_out_position_was_in_an_explanation_record():
    """128 sequences x 128 tokens, the default settings: before every neuron drew its random
    records from sequences without its top records, 1,140 held-out positions of these 32 neurons
    lay inside explanation records under the default protocol's top_and_random and random_only
    (170 under the paper's), and 7,778 under the anthropic split (bins and random records also
    shared sequences with explanation records)."""
    counts = leaks(mined_records(synthetic_site()))
    assert counts == {key: 0 for key in counts}


def test_each_neurons_records_lie_in_distinct_sequences_whatever_the_batching():
    activations = synthetic_site(sequences=64, length=96, neurons=6, seed=1)
    a, b = mined_records(activations, batch_size=16), mined_records(activations, batch_size=7)
    assert [r.random_sample for r in a] == [r.random_sample for r in b]
    assert [r.random_sample_by_quantile for r in a] == [r.random_sample_by_quantile for r in b]
    for neuron in a:
        records = (neuron.most_positive_activation_records + neuron.random_sample
                   + [r for group in neuron.random_sample_by_quantile for r in group])
        sequences = [int(record.tokens[0]) // 96 for record in records]
        assert len(sequences) == len(set(sequences))
        assert len(neuron.random_sample) == INTERP.random_k  # 64 >= top_k + random_k


def test_a_trained_models_neurons_leak_nothing(prepared, trained):
    """The trained tiny run's ISTA codes on its validation text (the capture pass's sequences)."""
    from run_helpers import interp_config

    from crate_jax.data.token_arrays import prepare_token_arrays
    from crate_jax.interp.activations.capture import evaluation_sequences
    from crate_jax.interp.evaluate import restore_params
    from crate_jax.model import apply_with_neurons, model_from_config

    config = interp_config(prepared, {})
    model = model_from_config(config)
    params, _ = restore_params(config, trained, model)
    validation = prepare_token_arrays(config.data, config.model.vocab_size, trained).validation
    text = evaluation_sequences(validation, INTERP.seq_len, 64)
    capture = jax.jit(lambda p, t: apply_with_neurons(model, p, t, ("ista",))[1]["ista"][0])
    site = np.concatenate([np.asarray(capture(params, text[i:i + 16]), np.float32)
                           for i in range(0, len(text), 16)])[..., :24]
    counts = leaks(mined_records(site))
    assert counts == {key: 0 for key in counts}


def test_an_interp_folder_mined_by_the_old_rule_is_recomputed(tmp_path):
    """Its `inputs.json` has no `records_version` (or an older one): moved aside, not reused."""
    from crate_jax.interp.freshness import claim_outputs, interp_inputs
    from crate_jax.layout import RunLayout

    layout = RunLayout(tmp_path)
    inputs = interp_inputs(crate.get_config(), 30, {"w": np.zeros(3)}, {})
    assert inputs["records_version"] == RECORDS_VERSION > 1
    old = {key: value for key, value in inputs.items() if key != "records_version"}
    layout.interp.mkdir()
    (layout.interp / "records.jsonl").write_text("mined by the old rule\n")
    layout.interp_inputs.write_text(json.dumps(old))
    said = []
    claim_outputs(layout, inputs, said.append)
    assert said == [f"interp: inputs changed (records_version (none) -> {RECORDS_VERSION}); "
                    "moved interp/ to interp.stale-1/ and recomputing"]
    assert not (layout.interp / "records.jsonl").exists()
    claim_outputs(layout, inputs, said.append)  # the same inputs again: resumed
    assert len(said) == 1
