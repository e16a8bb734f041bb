"""The token reference: a context-free per-token prediction scored like an explanation, from means
that never saw the scored records. Hand-built neurons with a known answer, then a real run."""

import json

import numpy as np
import pytest
from run_helpers import copy_run, interp_config

from crate_jax.interp.activations.miner import RecordMiner
from crate_jax.interp.activations.record_pool import window_starts
from crate_jax.interp.activations.token_means import TokenMeans, frequent_token_ids
from crate_jax.interp.evaluate import evaluate_interpretability
from crate_jax.interp.explanations.token_reference import TokenReference
from crate_jax.layout import RunLayout

SEQUENCES, LENGTH, VOCAB, WINDOW = 96, 32, 12, 8
RARE = VOCAB  # a token id that occurs once, inside neuron 0's best record


def _decode(token: int) -> str:
    return f"t{token}"


def _hand_built():
    """Token ids `[S, T]` and activations `[S, T, 3]`: neuron 0 is a function of the token
    alone, neuron 1 of the previous token (context), neuron 2 of the token plus a large
    position-dependent part."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (SEQUENCES, LENGTH))
    tokens[5, 10] = RARE
    table = rng.uniform(0.5, 3.0, VOCAB + 1)
    table[RARE] = 50.0  # its sequence is neuron 0's top record, and the window shows it
    previous = np.concatenate([np.zeros((SEQUENCES, 1), int), tokens[:, :-1]], axis=1)
    activations = np.stack([table[tokens], table[previous],
                            table[tokens] + 3 * np.sin(np.arange(LENGTH) / 3)[None, :]], axis=-1)
    return tokens, activations.astype(np.float32)


def _mine(tokens, activations, path, max_rows=None):
    """The capture pass's work on hand-built arrays: records and the reference's means file."""
    miner = RecordMiner(3, LENGTH, SEQUENCES, window=WINDOW, top_k=8, random_k=8,
                        quantile_bins=2, per_bin=2, seed=0)
    means = TokenMeans(frequent_token_ids(tokens, max_rows or VOCAB + 1), 3)
    for start in range(0, SEQUENCES, 32):  # batches, as the capture pass streams them
        rows = np.arange(start, start + 32)
        miner.observe(rows, tokens[rows], activations[rows])
        means.observe(tokens[rows], activations[rows])
    for start in range(0, SEQUENCES, 32):
        rows = np.arange(start, start + 32)
        miner.observe_second_pass(rows, tokens[rows], activations[rows])
    means.write(path, np.arange(3), miner.covered_positions())
    return miner, list(miner.neuron_records(0, range(3), _decode))


def test_a_token_function_scores_one_and_context_scores_less(tmp_path):
    tokens, activations = _hand_built()
    _, records = _mine(tokens, activations, tmp_path / "means.npz")
    reference = TokenReference(tmp_path / "means.npz", _decode)
    token_only, context, positional = (reference.scores(r, "default") for r in records)
    for split in ("top_and_random", "random_only", "top_only", "anthropic"):
        assert token_only[split] == pytest.approx(1.0, abs=1e-6), split
    assert context["top_and_random"] < 0.5 and context["random_only"] < 0.5
    assert positional["random_only"] < 0.9 * token_only["random_only"]


def test_the_means_leave_out_every_position_of_the_neurons_records(tmp_path):
    """Recomputed by brute force from the miner's record positions (sequence, centre and the
    window rule): each row's mean over the positions no record of the neuron shows."""
    tokens, activations = _hand_built()
    miner, _ = _mine(tokens, activations, tmp_path / "means.npz")
    reference = TokenReference(tmp_path / "means.npz", _decode)
    top, bins = miner.top_records(), miner.quantile_records()
    for neuron in range(3):
        covered = np.zeros((SEQUENCES, LENGTH), bool)
        pairs = list(zip(top["sequence"][:, neuron], top["centre"][:, neuron], strict=True))
        random = miner.random_records()
        pairs += list(zip(random["sequence"][:, neuron], random["centre"][:, neuron],
                          strict=True))
        pairs += list(zip(bins["sequence"][..., neuron].ravel(),
                          bins["centre"][..., neuron].ravel(), strict=True))
        for sequence, centre in pairs:
            if sequence >= 0:
                start = window_starts(np.asarray([centre]), LENGTH, WINDOW)[0]
                covered[sequence, start:start + WINDOW] = True
        values, left = activations[..., neuron][~covered], tokens[~covered]
        for token in range(VOCAB):
            expected = values[left == token].mean()
            assert reference.predict(neuron, [_decode(token)])[0] == pytest.approx(expected,
                                                                               rel=1e-5)
        # Seen only inside neuron 0's top record: predicted by the neuron's mean of the rest.
        assert reference.predict(neuron, [_decode(RARE)])[0] == pytest.approx(values.mean(),
                                                                          rel=1e-5)
    assert reference.predict(0, [_decode(RARE)])[0] < 5  # not the 50 the record shows


def test_a_bounded_table_shares_one_row_among_the_rarer_tokens(tmp_path):
    """With room for four ids, the rest are summed in the last row: they count towards the
    neuron's mean, which predicts them, and the scores stay finite."""
    tokens, activations = _hand_built()
    miner, records = _mine(tokens, activations, tmp_path / "means.npz", max_rows=4)
    with np.load(tmp_path / "means.npz") as data:
        kept, sums, counts = data["token_ids"], data["sums"], data["counts"]
    frequency = np.bincount(tokens.ravel())
    assert kept.tolist() == np.argsort(-frequency, kind="stable")[:4].tolist()
    assert sums.shape == counts.shape == (5, 3)
    covered = miner.covered_positions()
    for neuron, (covered_tokens, _) in enumerate(covered):
        others = ~np.isin(covered_tokens, kept)
        assert counts[4, neuron] == (~np.isin(tokens, kept)).sum() - others.sum()
    reference = TokenReference(tmp_path / "means.npz", _decode)
    rare = next(t for t in range(VOCAB) if t not in kept)
    assert reference.predict(0, [_decode(rare)]) == [pytest.approx(sums[:, 0].sum()
                                                                / counts[:, 0].sum())]
    scores = reference.scores(records[0], "default")
    assert all(np.isfinite(scores[split]) for split in scores)
    assert 0.2 < scores["random_only"] < 0.99  # four tokens told apart, the rest pooled


def test_ids_with_the_same_text_are_one_token(tmp_path):
    """Records show texts: ids that decode alike are predicted by their pooled mean."""
    tokens, activations = _hand_built()
    means = TokenMeans(frequent_token_ids(tokens, VOCAB + 1), 3)
    means.observe(tokens, activations)
    nothing = (np.zeros(0, np.int64), np.zeros(0, np.float32))
    means.write(tmp_path / "means.npz", np.arange(3), [nothing] * 3)
    reference = TokenReference(tmp_path / "means.npz", lambda t: "t0" if t == 1 else _decode(t))
    pooled = activations[..., 2][np.isin(tokens, [0, 1])].mean()
    assert reference.predict(2, ["t0"]) == [pytest.approx(pooled, rel=1e-5)]
    assert reference.predict(2, ["t1"]) == [pytest.approx(activations[..., 2].mean(), rel=1e-5)]


def test_on_a_trained_run_the_token_reference_scores_above_token_lookup(prepared, trained,
                                                                         tmp_path):
    """Per site, the token reference's mean is at or above the token_lookup explainer's on this
    run (an observation that keeps the reference a strong per-token baseline, not a bound: an
    explanation can beat it, and the summary counts the neurons whose explanation does)."""
    workdir = copy_run(trained, tmp_path, "run")
    config = interp_config(prepared, dict(num_sequences=32, neurons_per_layer=16,
                                          bootstrap_samples=100, seq_len=64, window=16))
    summary = evaluate_interpretability(config, workdir)
    for site, layers in summary["sites"].items():
        for layer, entry in layers.items():
            explained = entry["splits"]["top_and_random"]
            reference = entry["token_reference"]["top_and_random"]
            above = entry["explanation_above_token_reference"]["top_and_random"]
            print(f"{site} layer {layer}: token_lookup {explained['mean']:.3f}, reference "
                  f"{reference['mean']:.3f}, token_lookup above its reference in {above['count']} "
                  f"of {above['of']} neurons")
            # The reference is defined wherever the explanation's score is (a token_lookup
            # simulation that is constant on the held-out records has none).
            assert reference["n"] >= explained["n"] == above["of"] > 0, (site, layer)
            assert reference["mean"] >= explained["mean"], (site, layer)
            assert above["count"] < above["of"] / 2, (site, layer)
    layout = RunLayout(workdir)
    for site, layers in summary["sites"].items():  # pooled over the site's layers
        lines = [json.loads(line) for layer in layers
                 for line in layout.scores(site, int(layer)).read_text().splitlines()
                 if line.strip()]
        pairs = np.asarray([(line["scores"]["top_and_random"],
                             line["token_reference_scores"]["top_and_random"]) for line in lines
                            if line["scores"].get("top_and_random") is not None
                            and line["token_reference_scores"].get("top_and_random") is not None])
        explained, reference = pairs.mean(axis=0)
        print(f"{site}: token_lookup {explained:.3f}, reference {reference:.3f} over {len(pairs)} "
              f"neurons; token_lookup above its reference in {(pairs[:, 0] > pairs[:, 1]).sum()}")
        assert reference >= explained, site
    written = json.loads(layout.summary.read_text())
    assert all({"token_reference", "explanation_above_token_reference"} <= set(entry)
               for layers in written["sites"].values() for entry in layers.values())
    line = json.loads(layout.scores("ista", 0).read_text().splitlines()[0])
    assert set(line["token_reference_scores"]) == {"top_and_random", "random_only", "top_only",
                                          "anthropic"}
    assert "token reference (t&r)" in layout.interp_report.read_text()
