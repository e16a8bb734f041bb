"""Detection and fuzzing (`judging`) and the truth control (`truth_control`) on hand-built
neurons whose rule is known: records mined by the real `RecordMiner`, scored through the same
functions the interp stage uses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crate_jax.interp.activations.miner import RecordMiner
from crate_jax.interp.activations.records import attach_starts, shown_tokens
from crate_jax.interp.explanations.judging import (
    CONTEXT_TOKENS,
    DETECTION_CONTEXT,
    NEGATIVES_PER_KIND,
    SimulatorJudge,
    auroc,
    balanced_accuracy,
    firing_level,
    fuzzed_windows,
    judge_scores,
    judged_contexts,
    judgement_cases,
)
from crate_jax.interp.explanations.scoring import split_scores
from crate_jax.interp.explanations.splits import explanation_records, held_out_records
from crate_jax.interp.explanations.token_lookup import TokenLookupExplainer, TokenLookupSimulator
from crate_jax.interp.explanations.truth_control import (
    PlantedLabels,
    TruthExplainer,
    TruthSimulator,
)

WORDS = [f" w{k}" for k in range(98)] + [" x", " y"]
X, Y = 98, 99
SEQUENCES, SEQ_LEN = 96, 128


def _mined(activations: np.ndarray, tokens: np.ndarray) -> list:
    """Records of every neuron of `activations` `[S, T, N]` over `tokens` `[S, T]`, mined as
    the interp stage mines them, with their positions attached."""
    miner = RecordMiner(activations.shape[-1], SEQ_LEN, SEQUENCES, window=64, top_k=20,
                        random_k=20, quantile_bins=5, per_bin=4, seed=0)
    indices = np.arange(SEQUENCES)
    miner.observe(indices, tokens, activations)
    miner.observe_second_pass(indices, tokens, activations)
    neurons = list(miner.neuron_records(0, range(activations.shape[-1]), lambda t: WORDS[t]))
    attach_starts(neurons, {"neuron_index": np.arange(activations.shape[-1]),
                            **miner.record_starts()})
    return neurons


def _text_and_feature() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, len(WORDS), size=(SEQUENCES, SEQ_LEN)).astype(np.int32)
    # A context feature: on from some token until 6 tokens later (like a negation scope).
    starts = rng.random((SEQUENCES, SEQ_LEN)) < 0.01
    feature = np.zeros_like(starts)
    for lag in range(6):
        feature[:, lag:] |= starts[:, :SEQ_LEN - lag]
    return tokens, feature


def _neurons():
    tokens, feature = _text_and_feature()
    activations = np.stack([10.0 * (tokens == X), 10.0 * (tokens == Y), 7.0 * feature],
                           axis=-1).astype(np.float32)
    return tokens, feature, _mined(activations, tokens)


def _cases(neuron):
    return judgement_cases(neuron, "default", seed=0)


def _token_lookup(neuron):
    records = explanation_records(neuron, "openai")
    return TokenLookupExplainer().explain(records, max(max(r.activations) for r in records))


def test_records_know_where_they_start_in_the_evaluation_text():
    tokens, _, neurons = _neurons()
    flat = tokens.reshape(-1)
    for neuron in neurons:
        records = (neuron.most_positive_activation_records + neuron.random_sample
                   + [r for b in neuron.random_sample_by_quantile for r in b])
        for record in records:
            ids = flat[record.start:record.start + len(record.tokens)]
            assert [WORDS[t] for t in ids] == record.tokens


def test_a_perfect_explanation_detects_and_fuzzes_perfectly_another_neurons_at_chance():
    _, _, (x_neuron, y_neuron, _) = _neurons()
    judge = SimulatorJudge(TokenLookupSimulator())
    contexts = judged_contexts(x_neuron, "default", seed=0)
    kinds = [c.kind for c in contexts]
    assert kinds.count("activating") >= 10 and kinds.count("random") == NEGATIVES_PER_KIND
    assert kinds.count("hard") == 0  # ' x' always fires: it is never a silent target
    assert all(c.record.tokens[-1] == " x" for c in contexts if c.kind == "activating")
    assert all(len(c.record.tokens) == DETECTION_CONTEXT for c in contexts
               if c.kind != "activating")
    own = judge_scores(judge, _token_lookup(x_neuron), _cases(x_neuron))
    assert own == {"detection": 1.0, "detection_auroc": 1.0, "fuzzing": 1.0}
    other = judge_scores(judge, _token_lookup(y_neuron), _cases(x_neuron))
    assert abs(other["detection"] - 0.5) <= 0.1 and abs(other["fuzzing"] - 0.5) <= 0.1


def test_contexts_are_held_out_and_the_right_length():
    _, _, neurons = _neurons()
    for neuron in neurons:
        seen = {(r.start, len(r.tokens)) for r in explanation_records(neuron, "openai")}
        seen_positions = {s + k for s, n in seen for k in range(n)}
        level, _ = firing_level(neuron, "default")
        contexts = [c.record for c in judged_contexts(neuron, "default", seed=0)]
        contexts += fuzzed_windows(neuron, "default", level)
        for context in contexts:
            assert len(context.tokens) <= CONTEXT_TOKENS
            span = range(context.start, context.start + len(context.tokens))
            assert seen_positions.isdisjoint(span)


def test_hard_negatives_hold_a_firing_token_in_another_context():
    tokens, feature, _ = _neurons()
    # Fires on ' x' only inside the feature's scope: ' x' elsewhere is a hard negative.
    activations = (10.0 * ((tokens == X) & feature))[..., None].astype(np.float32)
    (neuron,) = _mined(activations, tokens)
    contexts = judged_contexts(neuron, "default", seed=0)
    hard = [c for c in contexts if c.kind == "hard"]
    assert hard and all(c.record.tokens[-1] == " x" for c in hard)
    scores = judge_scores(SimulatorJudge(TokenLookupSimulator()), _token_lookup(neuron),
                          _cases(neuron))
    assert scores["detection"] < 0.9  # the token list says yes to every hard negative


def test_the_truth_control_of_a_neuron_that_is_a_feature_scores_one():
    tokens, feature, (_, _, feature_neuron) = _neurons()
    labels = PlantedLabels(np.stack([tokens.reshape(-1) == X, feature.reshape(-1)], axis=1),
                           ["token: x", "scope"])
    records = explanation_records(feature_neuron, "openai")
    explanation = TruthExplainer(labels).explain(records, max(max(r.activations)
                                                              for r in records))
    assert explanation.details["features"] == [{"feature": "scope", "activation": 10.0}]
    simulator = TruthSimulator(labels)
    groups = held_out_records(feature_neuron, "openai")
    predicted = {name: simulator.simulate(explanation, [shown_tokens(r) for r in records])
                 for name, records in groups.items()}
    score = split_scores(groups, predicted, ["top_and_random"])["top_and_random"]
    assert score == pytest.approx(1.0)
    scores = judge_scores(SimulatorJudge(simulator), explanation, _cases(feature_neuron))
    assert scores == {"detection": 1.0, "detection_auroc": 1.0, "fuzzing": 1.0}


def test_balanced_accuracy_and_auroc_need_both_kinds_of_case():
    yes = np.asarray([True, True, False, False])
    assert balanced_accuracy(np.asarray([True, False, False, False]), yes) == 0.75
    assert math.isnan(balanced_accuracy(yes, np.ones(4, bool)))
    assert auroc(np.asarray([3.0, 1.0, 1.0, 0.0]), yes) == 0.875
    assert math.isnan(auroc(np.zeros(2), np.zeros(2, bool)))


def test_a_neuron_that_is_never_zero_still_has_silent_targets():
    """A residual-like coordinate: 5 everywhere, 8 on ' x'. Measured from its mean, it fires
    on ' x' only; measured from 0 (every token at >= 10% of the max) it would never be silent."""
    tokens, _, _ = _neurons()
    activations = (5.0 + 3.0 * (tokens == X))[..., None].astype(np.float32)
    (neuron,) = _mined(activations, tokens)
    kinds = [c.kind for c in judged_contexts(neuron, "default", seed=0)]
    assert kinds.count("random") == NEGATIVES_PER_KIND and kinds.count("activating") >= 10
    scores = judge_scores(SimulatorJudge(TokenLookupSimulator()), _token_lookup(neuron),
                          _cases(neuron))
    assert scores == {"detection": 1.0, "detection_auroc": 1.0, "fuzzing": 1.0}


def test_record_positions_that_do_not_fit_their_records_are_a_clear_error(tmp_path):
    from crate_jax.interp.activations.capture import InterpretabilityError, read_records
    from crate_jax.interp.activations.records import to_json

    _, _, neurons = _neurons()
    records = tmp_path / "interp" / "records" / "ista" / "layer_0.jsonl"
    records.parent.mkdir(parents=True)
    records.write_text("".join(to_json(n) + "\n" for n in neurons))
    positions = records.with_name("layer_0_positions.npz")
    np.savez(positions, neuron_index=np.arange(3), top=np.full((3, 20), -1),
             random=np.full((3, 20), -1), bins=np.full((3, 5, 4), -1))
    with pytest.raises(InterpretabilityError, match="does not describe the records"):
        read_records(records, positions)
    positions.write_bytes(b"not an npz")
    with pytest.raises(InterpretabilityError, match="does not describe the records"):
        read_records(records, positions)
