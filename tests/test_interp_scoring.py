"""Scoring, the token-lookup backend and the random baseline, on hand-made neurons."""

import json
import math

import numpy as np
import pytest

from crate_jax.interp.activations.miner import RecordMiner
from crate_jax.interp.activations.records import (
    ActivationRecord,
    NeuronId,
    NeuronRecord,
    from_json,
    to_json,
)
from crate_jax.interp.explanations.explanation import Explanation
from crate_jax.interp.explanations.neuron_scoring import (
    baseline_partners,
    explain_layer,
    score_layer,
)
from crate_jax.interp.explanations.scoring import correlation_score
from crate_jax.interp.explanations.splits import held_out_records, peak_snippet, split_groups
from crate_jax.interp.explanations.token_lookup import TokenLookupExplainer, TokenLookupSimulator
from crate_jax.interp.run_summary import mean_with_confidence_interval
from crate_jax.model import ConfigError


def test_correlation_is_pearson_pooled_over_all_tokens_of_all_records():
    # x = [1, 2, 3], y = [2, 4, 5]: cov = 3, var_x = 2, var_y = 42/9 -> r = 3 / sqrt(2 * 42 / 9).
    assert correlation_score([[1, 2], [3]], [[2, 4], [5]]) == pytest.approx(
        3 / math.sqrt(2 * 42 / 9), abs=1e-12)
    assert correlation_score([[1, 2, 3]], [[3, 2, 1]]) == pytest.approx(-1.0)
    assert math.isnan(correlation_score([[1, 2], [3]], [[4, 4], [4]]))  # constant simulation
    assert math.isnan(correlation_score([[0, 0], [0]], [[1, 2], [3]]))  # neuron never fires
    assert math.isnan(correlation_score([], []))  # a split without records (it crashed)
    with pytest.raises(ValueError, match="record 0: 2 true activations but 1 simulated"):
        correlation_score([[1, 2]], [[1]])


def test_mean_skips_nan_counts_it_and_brackets_the_mean():
    stats = mean_with_confidence_interval([0.2, 0.4, math.nan, 0.6, None, 0.8], samples=1000,
                                          seed=1)
    assert stats["n"] == 4 and stats["n_nan"] == 1
    assert stats["mean"] == pytest.approx(0.5)
    assert 0.2 <= stats["ci_low"] < 0.5 < stats["ci_high"] <= 0.8
    assert stats == mean_with_confidence_interval([0.2, 0.4, math.nan, 0.6, None, 0.8],
                                                  samples=1000, seed=1)
    single = mean_with_confidence_interval([0.3], samples=1000, seed=0)
    assert single["mean"] == 0.3 and math.isnan(single["ci_low"])


def _planted_records(tmp_path):
    """Neuron 0 fires (5.0) exactly on token 7, neuron 1 (3.0) exactly on token 11."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=(40, 64))
    activations = np.stack([(tokens == 7) * 5.0, (tokens == 11) * 3.0], axis=-1)
    miner = RecordMiner(2, seq_len=64, num_sequences=40, window=16, top_k=10, random_k=10,
                        quantile_bins=2, per_bin=2, seed=0)
    for start in range(0, 40, 8):
        miner.observe(np.arange(start, start + 8), tokens[start:start + 8],
                      activations[start:start + 8])
    for start in range(0, 40, 8):
        miner.observe_second_pass(np.arange(start, start + 8), tokens[start:start + 8],
                                  activations[start:start + 8])
    return list(miner.neuron_records(0, [0, 1], lambda token: f"tok{token}"))


def test_planted_neuron_is_explained_by_its_token_and_scores_high(tmp_path):
    neurons = _planted_records(tmp_path)
    explainer, simulator = TokenLookupExplainer(), TokenLookupSimulator()
    explanations = explain_layer(neurons, explainer, tmp_path)
    assert explanations[0]["openai"]["details"]["token_weights"] == {"tok7": 10.0}
    assert explanations[0]["openai"]["text"] == "fires on: 'tok7' (10)"
    scores = score_layer(neurons, explanations, simulator, tmp_path, random_baseline=True,
                         seed=0, layer=0)
    for split in ("top_and_random", "top_only", "anthropic"):
        assert scores[0]["scores"][split] > 0.95, split
    assert scores[0]["baseline_partner"] == 1
    assert abs(scores[0]["baseline_scores"]["top_and_random"]) < 0.2
    # Random records rarely hold token 7, but when they do the explanation predicts it.
    random_only = scores[0]["scores"]["random_only"]
    assert random_only is None or random_only > 0.95


def test_scoring_resumes_from_a_cut_file_with_identical_results(tmp_path):
    neurons = _planted_records(tmp_path)
    whole = tmp_path / "whole"
    whole.mkdir()
    explainer, simulator = TokenLookupExplainer(), TokenLookupSimulator()
    full = score_layer(neurons, explain_layer(neurons, explainer, whole), simulator, whole,
                       random_baseline=True, seed=0, layer=0)
    cut = tmp_path / "cut"
    cut.mkdir()
    first_line = (whole / "scores.jsonl").read_text().splitlines()[0]
    (cut / "scores.jsonl").write_text(first_line + "\n" + first_line[:40])  # killed mid-write
    resumed = score_layer(neurons, explain_layer(neurons, explainer, cut), simulator, cut,
                          random_baseline=True, seed=0, layer=0)
    assert resumed == full


def test_neurons_written_twice_by_two_runs_are_reported(tmp_path, capsys):
    """Two processes scoring one workdir at once (before runs locked it) left every neuron's
    line twice; the rerun says so, rather than keep them silently, and scores as before."""
    neurons = _planted_records(tmp_path)
    explainer, simulator = TokenLookupExplainer(), TokenLookupSimulator()
    explanations = explain_layer(neurons, explainer, tmp_path)
    full = score_layer(neurons, explanations, simulator, tmp_path, random_baseline=True,
                       seed=0, layer=0)
    scores = tmp_path / "scores.jsonl"
    scores.write_text(scores.read_text() * 2)
    capsys.readouterr()
    again = score_layer(neurons, explanations, simulator, tmp_path, random_baseline=True,
                        seed=0, layer=0)
    assert again == full
    assert (f"interp: {scores} holds {len(neurons)} neurons written again after a finished "
            "line (two runs wrote this workdir at once") in capsys.readouterr().out


def test_baseline_partner_is_never_the_neuron_itself():
    partners = baseline_partners(list(range(9)), seed=3, layer=1)
    assert sorted(partners) == list(range(9)) and sorted(partners.values()) == list(range(9))
    assert all(neuron != partner for neuron, partner in partners.items())


def test_records_round_trip_in_neuron_explainer_json_layout():
    record = NeuronRecord(neuron_id=NeuronId(layer_index=1, neuron_index=5),
                          random_sample=[ActivationRecord(["a", "b"], [0.0, 1.5])],
                          most_positive_activation_records=[ActivationRecord(["c"], [2.0])])
    text = to_json(record)
    raw = json.loads(text)
    assert raw["dataclass_name"] == "NeuronRecord"
    assert raw["neuron_id"] == {"dataclass_name": "NeuronId", "layer_index": 1, "neuron_index": 5}
    assert raw["random_sample"][0]["dataclass_name"] == "ActivationRecord"
    assert raw["mean"] is None  # NaN statistics are null: strict JSON
    restored = from_json(text)
    assert restored.random_sample == record.random_sample
    assert restored.most_positive_activation_records == record.most_positive_activation_records
    assert to_json(restored) == text


def test_every_nan_in_records_is_written_as_null_and_every_value_is_kept():
    """`to_json` keeps token texts and activations as they are without a call per item (the
    mining stage's hot loop): NaN inside an activation list, a NumPy float and a tuple must
    still come out as strict JSON."""
    record = NeuronRecord(neuron_id=NeuronId(layer_index=0, neuron_index=2),
                          random_sample=[ActivationRecord(["x", "y", "z"],
                                                          [1.0, math.nan, np.float64(math.nan)])],
                          quantile_boundaries=(0.5, np.float64(2.5)), mean=np.float64(math.nan),
                          variance=3)
    raw = json.loads(to_json(record))
    assert raw["random_sample"][0]["tokens"] == ["x", "y", "z"]
    assert raw["random_sample"][0]["activations"] == [1.0, None, None]
    assert raw["quantile_boundaries"] == [0.5, 2.5]
    assert raw["mean"] is None and raw["variance"] == 3


def test_held_out_groups_alternate_with_the_explanation_half_and_snippets_are_3_tokens():
    top = [ActivationRecord([f"t{i}"] * 5, [0.0, 1.0, float(10 - i), 1.0, 0.0])
           for i in range(8)]
    neuron = NeuronRecord(NeuronId(0, 0), random_sample=top[:4],
                          most_positive_activation_records=top)
    openai = held_out_records(neuron, "openai")
    assert openai["top"] == top[1::2] and openai["random"] == top[1:4:2]
    anthropic = held_out_records(neuron, "anthropic")
    assert anthropic["top"] == top[1::4] and anthropic["random"] == top[1:4:2]
    assert anthropic["snippets"] == [peak_snippet(r) for r in top[3::4]]
    snippet = peak_snippet(top[1])
    assert snippet.tokens == ["t1"] * 3 and snippet.activations == [1.0, 9.0, 1.0]


class _PromptExplainer:
    """Explains with the LLM explainer's prompt itself, so a test can see what it was shown."""

    def explain(self, records, max_activation):
        from crate_jax.interp.explanations.llm_backend import explanation_prompt
        return Explanation(text=explanation_prompt(records, max_activation))


def _neuron_with_held_out_peak(held_out_peak: float) -> NeuronRecord:
    """Top records whose rank-1 record (held out in every protocol) peaks at `held_out_peak`,
    while every explanation record peaks at 2.0."""
    top = [ActivationRecord(["x", "a", "y"], [0.0, 2.0, 1.0]) for _ in range(10)]
    top[1] = ActivationRecord(["x", "b", "y"], [0.0, held_out_peak, 1.0])
    random = [ActivationRecord(["x", "y", "z"], [0.0, 0.5, 0.0]) for _ in range(10)]
    return NeuronRecord(NeuronId(0, 0), random_sample=random,
                        most_positive_activation_records=top)


@pytest.mark.parametrize("explainer", [TokenLookupExplainer(), _PromptExplainer()],
                         ids=["token_lookup", "llm_prompt"])
def test_explanations_are_scaled_by_their_own_records_not_the_held_out_ones(tmp_path,
                                                                          explainer):
    """The 0-10 scale shown to the explainer is set by the records it is given (as OpenAI's
    demo does with `calculate_max_activation(train_activation_records)`): a held-out record
    ten times larger must not change the explainer's input."""
    shown = {}
    for peak in (2.0, 20.0):
        out = tmp_path / str(peak)
        out.mkdir()
        shown[peak] = explain_layer([_neuron_with_held_out_peak(peak)], explainer, out)[0]
    assert shown[20.0] == shown[2.0]
    if isinstance(explainer, TokenLookupExplainer):
        assert shown[20.0]["openai"]["details"]["token_weights"]["a"] == 10.0
    else:
        assert "a\t10" in shown[20.0]["openai"]["text"]


class _ThirdsSimulator:
    """Predicts k/3 on the k-th token: values no short decimal holds exactly."""

    def simulate(self, explanation, token_sequences):
        return [[k / 3 for k in range(len(tokens))] for tokens in token_sequences]


def test_simulations_are_stored_at_full_precision(tmp_path):
    neuron = _neuron_with_held_out_peak(2.0)
    explanations = explain_layer([neuron], TokenLookupExplainer(), tmp_path)
    score_layer([neuron], explanations, _ThirdsSimulator(), tmp_path, random_baseline=False,
                seed=0, layer=0)
    stored = json.loads((tmp_path / "scores.jsonl").read_text().splitlines()[0])
    expected = [[k / 3 for k in range(3)] for _ in held_out_records(neuron, "openai")["top"]]
    assert stored["simulations"]["openai"]["top"] == expected
    assert stored["simulations"]["anthropic"]["snippets"][0] == [k / 3 for k in range(3)]


def _ranked_neuron(top_k: int = 20, random_k: int = 20) -> NeuronRecord:
    """Records whose tokens name them: top rank i holds `t{i}_0..4` (peak in the middle),
    random record j holds `r{j}_0..4`."""
    def record(name, index, peak):
        return ActivationRecord([f"{name}{index}_{k}" for k in range(5)],
                                [0.0, 1.0, peak, 1.0, 0.0])
    return NeuronRecord(NeuronId(0, 0),
                        random_sample=[record("r", j, 0.5) for j in range(random_k)],
                        most_positive_activation_records=[record("t", i, 100.0 - i)
                                                          for i in range(top_k)])


class _NamingSimulator:
    """Predicts, on every token `t{i}_k` or `r{j}_k`, the rank it names (+1000 for random
    records), so the stored simulations tell which records each group held."""

    def simulate(self, explanation, token_sequences):
        def rank(token):
            number = float(token[1:].split("_")[0])
            return number + (1000.0 if token[0] == "r" else 0.0)
        return [[rank(token) for token in tokens] for tokens in token_sequences]


def _simulated_ranks(tmp_path, neuron, **protocol):
    """{protocol: {group: [record rank, ...]}} read back from scores.jsonl."""
    explanations = explain_layer([neuron], TokenLookupExplainer(), tmp_path, **protocol)
    score_layer([neuron], explanations, _NamingSimulator(), tmp_path, random_baseline=False,
                seed=0, layer=0, **protocol)
    stored = json.loads((tmp_path / "scores.jsonl").read_text().splitlines()[0])
    return {protocol: {group: [int(sequence[0]) for sequence in sequences]
                       for group, sequences in groups.items()}
            for protocol, groups in stored["simulations"].items()}


def test_out_of_context_snippets_come_from_top_records_not_scored_in_context(tmp_path):
    ranks = _simulated_ranks(tmp_path, _ranked_neuron())["anthropic"]
    in_context, snippets = set(ranks["top"]), set(ranks["snippets"])
    assert snippets and in_context and not snippets & in_context
    assert all(rank % 2 == 1 for rank in in_context | snippets)  # never an explanation record
    assert sorted(in_context | snippets) == list(range(1, 20, 2))  # every held-out top record


def test_paper_protocol_explains_from_even_top_ranks_and_scores_odd_top_and_even_random(
        tmp_path):
    """Bai & Ma 2024: explain from top[0:10:2]; top-and-random scores top[1:10:2] +
    random[0:10:2], random-only random[0:10:2]; the Anthropic-style records do not change."""
    neuron = _ranked_neuron(top_k=20, random_k=20)
    explanation = explain_layer([neuron], TokenLookupExplainer(max_tokens=1000), tmp_path,
                                record_protocol="paper")[0]["openai"]
    seen = {int(token[1:].split("_")[0]) for token in explanation["details"]["token_weights"]}
    assert seen == {0, 2, 4, 6, 8}
    ranks = _simulated_ranks(tmp_path, neuron, record_protocol="paper")
    assert ranks["openai"] == {"top": [1, 3, 5, 7, 9], "random": [1000, 1002, 1004, 1006, 1008]}
    (tmp_path / "default").mkdir()
    default = _simulated_ranks(tmp_path / "default", neuron)
    assert default["openai"] == {"top": list(range(1, 20, 2)),
                                 "random": list(range(1001, 1020, 2))}
    assert ranks["anthropic"] == default["anthropic"]
    assert split_groups()["top_and_random"] == ("top", "random")
    assert split_groups()["random_only"] == ("random",)


def test_unknown_record_protocol_or_too_few_records_for_the_paper_is_a_config_error():
    from crate_jax.interp.explanations.splits import (
        check_record_protocol,  # new with `interp.protocol`
    )

    with pytest.raises(ConfigError, match="interp.protocol='papr' is not one of default, paper"):
        check_record_protocol("papr", top_k=20, random_k=20)
    with pytest.raises(ConfigError, match="interp.protocol='paper' needs interp.top_k >= 10"):
        check_record_protocol("paper", top_k=8, random_k=20)
    check_record_protocol("paper", top_k=10, random_k=10)
    check_record_protocol("default", top_k=2, random_k=2)


def test_map_in_threads_keeps_item_order_or_yields_as_finished_and_raises_the_first_error():
    import threading
    import time

    from crate_jax.interp.explanations.thread_pool import map_in_threads

    def slow_first(item):
        time.sleep(0.2 if item == 0 else 0.0)
        return item, threading.get_ident()

    ordered = list(map_in_threads(slow_first, range(4), workers=4))
    assert [item for item, _ in ordered] == [0, 1, 2, 3]
    assert len({thread for _, thread in ordered}) > 1, "ran on several threads"
    finished = [item for item, _ in map_in_threads(slow_first, range(4), workers=4,
                                                     as_completed=True)]
    assert sorted(finished) == [0, 1, 2, 3] and finished[-1] == 0
    serial = list(map_in_threads(slow_first, range(3), workers=1))
    assert {thread for _, thread in serial} == {threading.get_ident()}, "one worker: no threads"

    def fail_on_odd(item):
        time.sleep(0.1 if item == 1 else 0.0)
        if item % 2:
            raise ValueError(f"item {item}")
        return item

    with pytest.raises(ValueError, match="item 1"):  # item 3 fails first, item 1 is raised
        list(map_in_threads(fail_on_odd, range(4), workers=4))
