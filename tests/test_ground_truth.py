"""Ground-truth interpretability on the planted corpus: AUROC, selectivity, recovery."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_helpers import planted_token_arrays

from configs import no_ista
from crate_jax.data import planted
from crate_jax.data.token_arrays import prepare_token_arrays, read_planted_truth
from crate_jax.data.tokenizer import SavedTokenizer
from crate_jax.interp.ground_truth import (
    _NEURON_BLOCK,
    MIN_JUDGED_TOKENS,
    activation_mass_shares,
    capture_all_neurons,
    feature_aurocs,
    feature_selectivity,
    layer_ground_truth,
    loss_above_floor,
    score_vs_truth,
)
from crate_jax.model import model_from_config
from crate_jax.report.run_files import ground_truth_by_site


def test_auroc_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    activations = rng.integers(0, 4, size=(60, 3)).astype(np.float32)  # many ties
    labels = rng.random((60, 2)) < 0.3
    aurocs = feature_aurocs(activations, labels)
    for neuron, feature in itertools.product(range(3), range(2)):
        positive = activations[labels[:, feature], neuron]
        negative = activations[~labels[:, feature], neuron]
        wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
        assert aurocs[neuron, feature] == pytest.approx(wins / (positive.size * negative.size))


def test_absent_features_have_no_auroc_and_constant_neurons_no_mass():
    activations = np.array([[0.0, 1.0], [0.0, 3.0], [0.0, 0.0]])
    labels = np.array([[True, False], [True, False], [False, False]])
    assert np.isnan(feature_aurocs(activations, labels)[:, 1]).all()
    shares = activation_mass_shares(activations, labels)
    assert np.isnan(shares[0]).all()
    assert shares[1, 0] == pytest.approx(1.0)  # the mass above the mean (4/3) is on token 1


def test_a_layer_wider_than_a_block_of_neurons_gets_each_neuron_its_own_measures():
    """`layer_ground_truth` measures neurons a block of columns at a time (bounded memory on a
    2,048-wide SAE layer): every neuron's numbers must equal those of the whole layer at once,
    whichever block it falls in."""
    rng = np.random.default_rng(1)
    labels = _synthetic_labels(tokens=3000)
    width = 2 * _NEURON_BLOCK + 37  # three blocks, the last partial
    activations = np.maximum(rng.normal(size=(3000, width)), 0).astype(np.float32)
    activations[:, 5] = labels[:, 2] * 3.0  # a perfect detector in the first block...
    activations[:, width - 1] = labels[:, 3] * 2.0  # ...and one in the partial last block
    truth = layer_ground_truth(activations, labels, ["rare", "common", "five", "other"])
    aurocs = feature_aurocs(activations, labels)
    best = [truth["features"][name]["best_neuron"] for name in ("five", "other")]
    assert best == [5, width - 1]
    assert [truth["features"][name]["auroc"] for name in ("five", "other")] == [1.0, 1.0]
    selectivity = feature_selectivity(activations, labels)
    rows = np.arange(width)
    chosen = [["rare", "common", "five", "other"].index(name) if name else -1
              for name in truth["neurons"]["best_feature"]]
    expected = [None if name is None else float(selectivity[n, chosen[n]])
                for n, name in enumerate(truth["neurons"]["best_feature"])]
    # Equal to the last bits or nearly: BLAS may sum a block (a narrow one most of all) in
    # another order than the whole layer; values near 0 then differ by a few 1e-15.
    def floats(values):
        return np.array([np.nan if v is None else v for v in values])
    np.testing.assert_allclose(floats(truth["neurons"]["selectivity"]), floats(expected),
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(floats(truth["neurons"]["best_auroc"]), floats(
        [None if c < 0 else aurocs[n, c] for n, c in zip(rows, chosen, strict=True)]),
        rtol=1e-12)


def _synthetic_labels(tokens=20000, seed=0):
    """`[tokens, 4]`: a rare feature (1%), a common one (40%), two disjoint 5% features."""
    rng = np.random.default_rng(seed)
    draw = rng.random(tokens)
    return np.stack([draw < 0.01, draw >= 0.6, (draw >= 0.1) & (draw < 0.15),
                     (draw >= 0.2) & (draw < 0.25)], axis=1)


def test_selectivity_is_zero_at_chance_and_one_for_a_perfect_detector_of_any_feature():
    """The truth measure's anchors, on synthetic neurons of each kind; the old measure (the
    share of positive mass on the best feature) gave a constant neuron the base rate of the
    commonest feature (0.4 here) and random neurons about as much."""
    labels = _synthetic_labels()
    rng = np.random.default_rng(1)
    tokens = labels.shape[0]
    magnitude = rng.exponential(size=tokens)
    rare, common, first, second = (labels[:, i].astype(np.float64) for i in range(4))
    neurons = {
        "constant": np.full(tokens, 2.5),
        "random": rng.normal(size=tokens),
        "random sparse": np.maximum(rng.normal(size=tokens) - 1.5, 0),
        "rare detector": rare,
        "common detector": common,
        "detector with offset and varying magnitude": 3.0 + rare * magnitude,
        "two-feature detector": first + second,
        "half-feature detector": first * (rng.random(tokens) < 0.5),
    }
    selectivity = feature_selectivity(np.stack(list(neurons.values()), axis=1), labels)
    best = dict(zip(neurons, np.nanmax(selectivity, axis=1), strict=True))
    assert np.all(selectivity[0] == 0.0)
    assert abs(best["random"]) < 0.05 and abs(best["random sparse"]) < 0.05
    for perfect in ("rare detector", "common detector",
                    "detector with offset and varying magnitude"):
        assert best[perfect] == pytest.approx(1.0), perfect
    assert best["two-feature detector"] == pytest.approx(0.5, abs=0.05)
    assert best["half-feature detector"] == pytest.approx(0.5, abs=0.05)


def test_the_best_feature_is_chosen_by_selectivity_not_by_auroc():
    """A neuron firing on 90% of a broad feature and highest on a rare subset of it: the rare
    subset has the higher AUROC (1.0), but the neuron is a detector of the broad feature."""
    rng = np.random.default_rng(2)
    draw = rng.random(20000)
    rare, broad = draw < 0.01, draw < 0.2
    neuron = broad * (rng.random(20000) < 0.9) + 2.0 * rare
    truth = layer_ground_truth(neuron[:, None], np.stack([rare, broad], axis=1),
                               ["rare", "broad"])
    aurocs = feature_aurocs(neuron[:, None], np.stack([rare, broad], axis=1))[0]
    assert aurocs[0] > aurocs[1]
    assert truth["neurons"]["best_feature"] == ["broad"]
    assert truth["neurons"]["selectivity"][0] == pytest.approx(0.9, abs=0.02)
    assert truth["neurons"]["best_auroc"][0] == pytest.approx(aurocs[1])


def test_neurons_firing_on_too_few_tokens_are_counted_apart():
    """A neuron firing on a handful of tokens would score 0 or 1 by chance: it is counted in
    `too_few_firing` and left out of the mean, as is a constant neuron; so are features on
    too few tokens."""
    labels = _synthetic_labels()
    few = np.zeros(labels.shape[0])
    few[np.flatnonzero(labels[:, 0])[:MIN_JUDGED_TOKENS - 1]] = 1.0  # all on the rare feature
    enough = labels[:, 1].astype(np.float64)
    scarce = np.zeros(labels.shape[0], bool)
    scarce[:MIN_JUDGED_TOKENS - 1] = True
    truth = layer_ground_truth(np.stack([few, np.zeros_like(few), enough], axis=1),
                               np.column_stack([labels, scarce]),
                               ["rare", "common", "first", "second", "scarce"])
    assert truth["too_few_firing"] == 2 and truth["judged_neurons"] == 1
    assert truth["neurons"]["selectivity"][:2] == [None, None]
    assert truth["neurons"]["best_feature"] == [None, None, "common"]
    assert truth["mean_selectivity"] == pytest.approx(1.0)
    assert truth["too_rare_features"] == ["scarce"] and "scarce" not in truth["features"]


def test_noise_recovers_nothing():
    rng = np.random.default_rng(1)
    labels = rng.random((4000, 5)) < 0.2
    truth = layer_ground_truth(rng.normal(size=(4000, 64)).astype(np.float32), labels,
                               [f"f{i}" for i in range(5)])
    assert truth["recovery"] == 0.0
    assert abs(truth["mean_selectivity"]) < 0.1 and truth["too_few_firing"] == 0


@pytest.fixture(scope="module")
def planted_labels():
    documents = [planted.generate_document(13, index) for index in range(300)]
    return (np.concatenate([d.labels for d in documents]),
            [word for d in documents for word in d.words])


def test_a_perfect_detector_of_any_function_word_or_the_end_of_text_is_recognised(
        planted_labels):
    """Under the old labels `.`, `not`, `again`, `:`, `today`, `now` and the end of text carried
    only the topic: their perfect detectors scored AUROC about 0.5."""
    labels, words = planted_labels
    words = np.asarray(words)
    detectors = np.stack([(words == word).astype(np.float32) for word in planted.IDENTITY_WORDS],
                         axis=1)
    truth = layer_ground_truth(detectors, labels, list(planted.FEATURES))
    judged = [n for n, word in enumerate(planted.IDENTITY_WORDS)
              if truth["neurons"]["selectivity"][n] is not None]
    assert len(judged) >= len(planted.IDENTITY_WORDS) - 2  # `all`, `at` may be too rare
    for neuron in judged:
        assert truth["neurons"]["selectivity"][neuron] == pytest.approx(1.0)
        assert truth["neurons"]["best_auroc"][neuron] == pytest.approx(1.0)


def test_a_perfect_induction_neuron_detects_the_next_copied_token(planted_labels):
    """An induction neuron fires where the next token is a copy; on `copy:copied` (the copied
    token's own position) it scored AUROC 0.947 and nothing scored it 1."""
    labels, _ = planted_labels
    index = planted.FEATURE_INDEX
    induction = labels[:, index["copy:next_copied"]].astype(np.float32)[:, None]
    truth = layer_ground_truth(induction, labels, list(planted.FEATURES))
    assert truth["neurons"]["best_feature"] == ["copy:next_copied"]
    assert truth["neurons"]["selectivity"] == [pytest.approx(1.0)]
    assert feature_selectivity(induction, labels)[0, index["copy:copied"]] < 0.95


def test_score_vs_truth_ranks_scores_against_selectivity():
    truth = {"neurons": {"selectivity": [0.1, 0.5, 0.9, None, 0.3]}}
    result = score_vs_truth(truth, {0: 0.0, 1: 0.4, 2: 0.8, 3: 0.9, 4: 0.2})
    assert result["n"] == 4  # neuron 3 fires on too few tokens to judge
    assert result["spearman"] == pytest.approx(1.0)
    assert score_vs_truth(truth, {0: 0.8, 1: 0.4, 2: 0.0, 4: 0.6})["spearman"] == \
        pytest.approx(-1.0)


def test_site_recovery_counts_a_feature_detected_in_any_layer():
    """Layer 0 detects `a`, layer 1 detects `b`: the site recovers both (per-layer recovery
    averaged over layers said 0.5); selectivity is pooled over the judged neurons of all layers,
    and the neurons too few firing are summed."""
    def layer(aurocs, mean_selectivity, judged, too_few):
        return {"recovery": float(np.mean([a >= 0.9 for a in aurocs.values()])),
                "mean_selectivity": mean_selectivity, "judged_neurons": judged,
                "too_few_firing": too_few,
                "features": {name: {"best_neuron": 0, "auroc": a} for name, a in aurocs.items()},
                "score_vs_truth": {"spearman": 0.5, "n": 4}}

    truth = {"recovery_auroc": 0.9, "sites": {"attn": {
        "0": layer({"a": 0.95, "b": 0.6}, 0.2, judged=10, too_few=2),
        "1": layer({"a": 0.7, "b": 0.92}, 0.5, judged=30, too_few=0)}}}
    site = ground_truth_by_site(truth)["attn"]
    assert site["recovery"] == pytest.approx(1.0)
    assert site["mean_selectivity"] == pytest.approx((0.2 * 10 + 0.5 * 30) / 40)
    assert site["too_few_firing"] == 2 and site["spearman"] == pytest.approx(0.5)


def test_loss_above_floor_pairs_each_prediction_with_its_own_token():
    """Two sequences of 3 tokens predict tokens 1, 2 and 4, 5 of the stream."""
    nll = np.array([[2.0, 3.0], [4.0, 5.0]])
    floor = np.array([9.0, 1.0, 1.0, 9.0, 2.0, 2.0])
    labels = np.array([[True], [True], [False], [True], [False], [True]])
    # Each sequence starts with an end-of-text (0): every target's document is in view.
    result = loss_above_floor(nll, floor, labels, ["f"], sequences=np.array([[0, 7, 7]] * 2),
                              end_of_text=0)
    assert result["floor"] == pytest.approx(1.5) and result["model_loss"] == pytest.approx(3.5)
    assert result["excess"] == pytest.approx(2.0)
    # Predicted positions 1, 2, 4, 5 carry the feature at 1 and 5: excesses 1 and 3 of 1+2+2+3.
    assert result["by_feature"]["f"] == {"tokens_fraction": 0.5, "excess_per_token": 2.0,
                                         "excess_share": 1.0}


@pytest.fixture(scope="module")
def planted_validation(tmp_path_factory):
    """`(sequences [count, 64], labels, feature names, tokenizer)` of a small planted corpus."""
    workdir = tmp_path_factory.mktemp("planted")
    tokens = planted_token_arrays(workdir, 600)
    truth = read_planted_truth(workdir / "data")
    count = tokens.validation.size // 64
    sequences = np.asarray(tokens.validation[:count * 64], np.int32).reshape(count, 64)
    tokenizer = SavedTokenizer.load(workdir / "data" / "tokenizer.json")
    return sequences, truth["labels"][:count * 64], [str(f) for f in truth["features"]], tokenizer


def _attention_only_model():
    config = no_ista.get_config("tiny")
    config.model.vocab_size = 128
    model = model_from_config(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return model, params


def test_a_feature_copied_into_one_neuron_by_hand_is_recovered_with_auroc_one(
        planted_validation):
    """Layer 0's residual stream is the embedding plus attention: silence attention, and write
    "is a bracket" into coordinate 7 of the bracket tokens' embeddings, 0 elsewhere."""
    sequences, labels, names, tokenizer = planted_validation
    model, params = _attention_only_model()
    params = jax.tree_util.tree_map(np.array, params)
    out = params["layer_0"]["attention"]["out"]
    out["kernel"][:] = 0.0
    out["bias"][:] = 0.0
    params["position_embedding"]["embedding"][:, 7] = 0.0
    embedding = params["token_embedding"]["embedding"]
    embedding[:, 7] = 0.0
    for bracket in ("(", ")"):
        (token,) = tokenizer.encode(bracket)
        embedding[token, 7] = 1.0
    resid = capture_all_neurons(model, params, sequences, ("resid",), batch_size=8)[0]["resid"]
    truth = layer_ground_truth(resid[0], labels, names)
    bracket = truth["features"]["word:bracket"]
    assert (bracket["best_neuron"], bracket["auroc"]) == (7, 1.0)
    assert (bracket["most_selective_neuron"], bracket["selectivity"]) == (7, pytest.approx(1.0))
    assert truth["neurons"]["best_feature"][7] == "word:bracket"
    assert truth["neurons"]["selectivity"][7] == pytest.approx(1.0)


def test_an_untrained_network_does_not_recover_the_contextual_features(planted_validation):
    """At initialisation no neuron tracks the hidden topic, negation scope, a copied span or
    pending agreement: those need learned attention."""
    sequences, labels, names, _ = planted_validation
    model, params = _attention_only_model()
    neurons, _ = capture_all_neurons(model, params, sequences, ("attn", "resid"), batch_size=8)
    contextual = [n for n in names if n.split(":")[0] in ("topic", "negation", "copy",
                                                          "agreement")]
    for site, layers in neurons.items():
        for layer in layers:
            truth = layer_ground_truth(layer, labels, names)
            best = {n: truth["features"][n]["auroc"] for n in contextual}
            assert max(best.values()) < 0.9, (site, best)
    assert planted.FEATURES == tuple(names)


def test_a_briefly_trained_model_beats_unigram_approaches_the_floor_and_gets_ground_truth(
        tmp_path):
    """The interp stage of a planted run writes ground_truth.json with every site and layer;
    training has taught some neuron a contextual feature the untrained network lacks."""
    from run_helpers import tiny_config

    from crate_jax.interp.evaluate import evaluate_interpretability
    from crate_jax.train.loop import train_and_evaluate

    config = tiny_config(num_steps=150, learning_rate=5e-3, eval_every=150,
                         checkpoint_every=150)
    config.data.update(dict(source="planted:1500", tokenizer="word"))
    config.model.vocab_size = 128
    config.interp.update(dict(num_sequences=16, seq_len=64, window=16, top_k=4, random_k=4,
                              quantile_bins=2, per_bin=2, neurons_per_layer=16,
                              bootstrap_samples=50))
    result = train_and_evaluate(config, tmp_path)
    references = json.loads((tmp_path / "references.json").read_text())
    floor = references["floor"]
    assert result["validation_loss"] < references["unigram"] - 0.5
    assert result["validation_loss"] - floor < 0.5 * (result["initial_validation_loss"] - floor)

    evaluate_interpretability(config, tmp_path)
    truth = json.loads((tmp_path / "interp" / "ground_truth.json").read_text())
    assert truth["tokens"] == 16 * 64 and truth["features"] == list(planted.FEATURES)
    assert truth["min_judged_tokens"] == MIN_JUDGED_TOKENS
    assert set(truth["sites"]) == {"ista", "attn", "resid"}
    above = truth["loss_above_floor"]
    assert above["targets"] == 16 * 63 and 0 < above["tokens"] < 16 * 63 and above["excess"] > 0
    assert above["model_loss"] == pytest.approx(above["floor"] + above["excess"])
    for site, layers in truth["sites"].items():
        assert set(layers) == {"0", "1"}
        for entry in layers.values():
            assert 0.0 <= entry["recovery"] <= 1.0
            width = 512 if site == "ista" else 128
            assert len(entry["neurons"]["index"]) == width
            assert entry["judged_neurons"] + entry["too_few_firing"] == width
            assert -1.0 <= entry["mean_selectivity"] <= 1.0
            assert entry["score_vs_truth"]["n"] <= 16
    # Training taught some neuron the negation scope better than any at initialisation.
    model = model_from_config(config)
    untrained = model.init(jax.random.key(config.seed), jnp.zeros((1, 8), jnp.int32))["params"]
    tokens = prepare_token_arrays(config.data, 128, tmp_path)
    sequences = np.asarray(tokens.validation[:16 * 64], np.int32).reshape(16, 64)
    labels = read_planted_truth(tmp_path / "data")["labels"][:16 * 64]
    neurons, _ = capture_all_neurons(model, untrained, sequences, ("ista", "attn", "resid"), 8)
    untrained_best = max(layer_ground_truth(layer, labels, truth["features"])
                         ["features"]["negation:scope"]["auroc"]
                         for layers in neurons.values() for layer in layers)
    trained_best = max(entry["features"]["negation:scope"]["auroc"]
                       for layers in truth["sites"].values() for entry in layers.values())
    assert trained_best > untrained_best + 0.1, (trained_best, untrained_best)
