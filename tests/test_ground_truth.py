"""Ground-truth interpretability on the planted corpus: AUROC, monosemanticity, recovery."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import no_ista
from crate_jax.data import planted
from crate_jax.data.token_arrays import prepare_token_arrays, read_planted_truth
from crate_jax.data.tokenizer import SavedTokenizer
from crate_jax.interp.ground_truth import (
    activation_mass_shares,
    capture_all_neurons,
    feature_aurocs,
    layer_ground_truth,
    loss_above_floor,
    score_vs_truth,
)
from crate_jax.model import model_from_config


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


def test_absent_features_have_no_auroc_and_silent_neurons_no_mass():
    activations = np.array([[0.0, 1.0], [0.0, 3.0], [0.0, 0.0]])
    labels = np.array([[True, False], [True, False], [False, False]])
    assert np.isnan(feature_aurocs(activations, labels)[:, 1]).all()
    shares = activation_mass_shares(activations, labels)
    assert np.isnan(shares[0]).all()
    assert shares[1, 0] == pytest.approx(1.0)


def test_noise_recovers_nothing():
    rng = np.random.default_rng(1)
    labels = rng.random((4000, 5)) < 0.2
    truth = layer_ground_truth(rng.normal(size=(4000, 64)).astype(np.float32), labels,
                               [f"f{i}" for i in range(5)])
    assert truth["recovery"] == 0.0
    assert abs(truth["mean_best_auroc"] - 0.5) < 0.1


def test_score_vs_truth_ranks_scores_against_monosemanticity():
    truth = {"neurons": {"mass_on_best": [0.1, 0.5, 0.9, None, 0.3],
                         "best_auroc": [0.6, 0.7, 0.95, 0.5, 0.65]}}
    result = score_vs_truth(truth, {0: 0.0, 1: 0.4, 2: 0.8, 3: 0.9, 4: 0.2})
    assert result["n"] == 4  # neuron 3 never fires
    assert result["spearman"] == pytest.approx(1.0)
    assert score_vs_truth(truth, {0: 0.8, 1: 0.4, 2: 0.0, 4: 0.6})["spearman"] == \
        pytest.approx(-1.0)


def test_loss_above_floor_pairs_each_prediction_with_its_own_token():
    """Two sequences of 3 tokens predict tokens 1, 2 and 4, 5 of the stream."""
    nll = np.array([[2.0, 3.0], [4.0, 5.0]])
    floor = np.array([9.0, 1.0, 1.0, 9.0, 2.0, 2.0])
    labels = np.array([[True], [True], [False], [True], [False], [True]])
    result = loss_above_floor(nll, floor, labels, ["f"])
    assert result["floor"] == pytest.approx(1.5) and result["model_loss"] == pytest.approx(3.5)
    assert result["excess"] == pytest.approx(2.0)
    # Predicted positions 1, 2, 4, 5 carry the feature at 1 and 5: excesses 1 and 3 of 1+2+2+3.
    assert result["by_feature"]["f"] == {"tokens_fraction": 0.5, "excess_per_token": 2.0,
                                         "excess_share": 1.0}


@pytest.fixture(scope="module")
def planted_validation(tmp_path_factory):
    """`(sequences [count, 64], labels, feature names, tokenizer)` of a small planted corpus."""
    config = no_ista.get_config("tiny")
    config.data.update(dict(source="planted:600", tokenizer="word"))
    workdir = tmp_path_factory.mktemp("planted")
    tokens = prepare_token_arrays(config.data, 128, workdir)
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
    assert truth["features"]["word:bracket"] == {"best_neuron": 7, "auroc": 1.0}
    assert truth["neurons"]["best_feature"][7] == "word:bracket"
    assert truth["neurons"]["mass_on_best"][7] == pytest.approx(1.0)


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
    assert set(truth["sites"]) == {"ista", "attn", "resid"}
    above = truth["loss_above_floor"]
    assert above["tokens"] == 16 * 63 and above["excess"] > 0
    assert above["model_loss"] == pytest.approx(above["floor"] + above["excess"])
    for site, layers in truth["sites"].items():
        assert set(layers) == {"0", "1"}
        for entry in layers.values():
            assert 0.0 <= entry["recovery"] <= 1.0
            assert len(entry["neurons"]["index"]) == (512 if site == "ista" else 128)
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
