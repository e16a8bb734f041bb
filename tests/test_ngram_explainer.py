"""The n-gram (N2G-style) backend on hand-built neurons whose rules are known."""

import json

import numpy as np
import pytest

from crate_jax.interp.activations.records import ActivationRecord, max_activation
from crate_jax.interp.explanations.explanation import Explanation
from crate_jax.interp.explanations.ngram import (
    NgramExplainer,
    NgramSimulator,
    explanation_text,
)
from crate_jax.interp.explanations.scoring import correlation_score
from crate_jax.interp.explanations.token_lookup import TokenLookupExplainer, TokenLookupSimulator

VOCAB = [" not", " any", " the", " cat", " sat", " on", " mat", " and", " a", "."]
WEIGHTS = np.array([0.08, 0.1, 0.12, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])


def _sequences(seed: int, count: int = 25, length: int = 64,
               weights: np.ndarray = WEIGHTS) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[VOCAB[i] for i in rng.choice(len(VOCAB), length, p=weights / weights.sum())]
            for _ in range(count)]


def _after(tokens: list[str], i: int, word: str, window: int = 8) -> bool:
    return word in tokens[max(0, i - window):i]


def _records(sequences: list[list[str]], neuron) -> list[ActivationRecord]:
    return [ActivationRecord(tokens, [neuron(tokens, i) for i in range(len(tokens))])
            for tokens in sequences]


def _any_after_not(tokens: list[str], i: int) -> float:
    return 8.0 if tokens[i] == " any" and _after(tokens, i, " not") else 0.0


def _score(explainer, simulator, train, test) -> float:
    explanation = explainer.explain(train, max_activation(train))
    predicted = simulator.simulate(explanation, [r.tokens for r in test])
    return correlation_score([r.activations for r in test], predicted)


def _explain(records: list[ActivationRecord], **kwargs) -> Explanation:
    return NgramExplainer(**kwargs).explain(records, max_activation(records))


def test_recovers_a_planted_two_token_rule_that_token_lookup_cannot_state():
    train = _records(_sequences(0), _any_after_not)
    test = _records(_sequences(1), _any_after_not)
    for records in (train, test):  # both kinds of ' any' occur on both sides
        assert {a > 0 for r in records for t, a in zip(r.tokens, r.activations, strict=True)
                if t == " any"} == {True, False}
    explanation = _explain(train)
    assert "' any' after ' not'" in explanation.text
    assert _score(NgramExplainer(), NgramSimulator(), train, test) >= 0.95
    # Token lookup can only say "' any'", half of whose occurrences are silent (r ~ 0.65 here).
    assert _score(TokenLookupExplainer(), TokenLookupSimulator(), train, test) < 0.8


def test_a_specific_pattern_suppresses_a_general_one():
    def any_unless_the(tokens, i):
        return 8.0 if tokens[i] == " any" and not _after(tokens, i, " the") else 0.0

    weights = WEIGHTS.copy()
    weights[VOCAB.index(" the")] = 0.03  # rare, so ' any' alone is the first, general pattern
    train = _records(_sequences(2, weights=weights), any_unless_the)
    test = _records(_sequences(3, weights=weights), any_unless_the)
    explanation = _explain(train)
    assert explanation.details["patterns"] == [
        {"token": " any", "after": " the", "activation": 0.0},
        {"token": " any", "after": None, "activation": 10.0}]
    assert _score(NgramExplainer(), NgramSimulator(), train, test) == pytest.approx(1.0)


def test_pairs_outrank_single_patterns_whatever_order_they_are_listed_in():
    patterns = [{"token": " any", "after": None, "activation": 8.0},
                {"token": None, "after": " cat", "activation": 3.0},
                {"token": " any", "after": " the", "activation": 0.0},
                {"token": " any", "after": " cat", "activation": 5.0}]
    explanation = Explanation("", {"context": 2, "patterns": patterns})
    tokens = [" any", " the", " cat", " any", " sat", " any", " a", " cat", " any"]
    # pos 3: both pairs match, ' any' after ' the' is listed first; pos 4: any token after
    # ' cat'; pos 5: ' cat' is 3 back, out of context 2; pos 8: ' any' after ' cat'.
    assert NgramSimulator().simulate(explanation, [tokens]) == [
        [8.0, 0.0, 0.0, 0.0, 3.0, 8.0, 0.0, 0.0, 5.0]]


def test_context_features_become_wildcard_patterns():
    def after_cat(tokens, i):
        return 6.0 if _after(tokens, i, " cat") else 0.0

    weights = WEIGHTS.copy()
    weights[VOCAB.index(" cat")] = 0.02
    train = _records(_sequences(4, weights=weights), after_cat)
    test = _records(_sequences(5, weights=weights), after_cat)
    explanation = _explain(train)
    assert explanation.details["patterns"][0] == {"token": None, "after": " cat",
                                                  "activation": 10.0}
    assert explanation.text.startswith("fires on: any token after ' cat' (10)")
    assert _score(NgramExplainer(), NgramSimulator(), train, test) >= 0.95


def test_text_form_and_json_round_trip():
    explanation = _explain(_records(_sequences(0), _any_after_not))
    assert explanation.text == "fires on: ' any' after ' not' (10)"
    details = json.loads(json.dumps(explanation.details))
    tokens = _sequences(6)
    assert (NgramSimulator().simulate(Explanation(explanation.text, details), tokens)
            == NgramSimulator().simulate(explanation, tokens))
    assert explanation_text([{"token": " any", "after": " not", "activation": 8.0},
                             {"token": None, "after": " cat", "activation": 6.5},
                             {"token": "\n", "after": None, "activation": 1.234}]) == (
        "fires on: ' any' after ' not' (8); any token after ' cat' (6.5); '\\n' (1.234)")


def test_degenerate_inputs_give_no_patterns_and_zero_predictions():
    simulator = NgramSimulator()
    for records, top in [([], 0.0),
                         ([ActivationRecord([" a", " b"], [0.0, 0.0])], 0.0),
                         ([ActivationRecord([" a", " b"], [-1.0, -3.0])], -1.0),
                         ([ActivationRecord([], [])], 0.0)]:
        explanation = NgramExplainer().explain(records, top)
        assert explanation.text == "never fires on these records"
        assert explanation.details["patterns"] == []
        assert simulator.simulate(explanation, [[" a", " b"], []]) == [[0.0, 0.0], []]
    assert simulator.simulate(explanation, []) == []
    # One-token records; negative activations count as 0; one record may carry a pattern.
    single = [ActivationRecord([" x"], [4.0]), ActivationRecord([" y"], [-2.0]),
              ActivationRecord([" x"], [4.0])]
    explanation = NgramExplainer().explain(single, 4.0)
    assert explanation.text == "fires on: ' x' (10)"
    assert simulator.simulate(explanation, [[" y", " x"]]) == [[0.0, 10.0]]
    alone = NgramExplainer().explain([ActivationRecord([" x", " y"], [0.0, 2.0])], 2.0)
    assert alone.text == "fires on: ' y' (10)"
    with pytest.raises(ValueError, match="record 0: 2 tokens but 1 activations"):
        NgramExplainer().explain([ActivationRecord([" a", " b"], [1.0])], 1.0)


def test_deterministic_and_independent_of_record_order():
    def mixed(tokens, i):  # a token rule, a context rule and noise-free overlaps
        value = 5.0 if tokens[i] == " mat" else 0.0
        return value + (3.0 if _any_after_not(tokens, i) else 0.0) + (
            1.0 if _after(tokens, i, " cat", 2) else 0.0)

    records = _records(_sequences(7), mixed)
    first = _explain(records, max_patterns=6)
    assert _explain(records, max_patterns=6) == first
    assert _explain(records[::-1], max_patterns=6) == first
    assert 3 <= len(first.details["patterns"]) <= 6


def test_bpe_like_tokens_with_spaces_newlines_and_unicode():
    tokens = ["def", " return", "\n", "\n\n", "  ", "é", "日本", " x", "", "'"]
    rng = np.random.default_rng(8)

    def fires(seq, i):  # ' return' at the start of a line
        return 7.0 if seq[i] == " return" and _after(seq, i, "\n", 2) else 0.0

    sequences = [[tokens[j] for j in rng.integers(0, len(tokens), 40)] for _ in range(20)]
    records = _records(sequences, fires)
    explanation = _explain(records, context=2)
    assert explanation.text.startswith("fires on: ' return' after '\\n' (10)")
    predicted = NgramSimulator().simulate(explanation, sequences)
    assert correlation_score([r.activations for r in records], predicted) > 0.9
