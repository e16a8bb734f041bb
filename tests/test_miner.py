"""RecordMiner against brute-force NumPy on a small tensor that fits in memory."""

import json

import numpy as np
import pytest

from crate_jax.interp.activations.miner import RecordMiner
from crate_jax.interp.activations.records import from_json, to_json

S, T, N = 13, 20, 7
WINDOW = 8
CONFIG = dict(window=WINDOW, top_k=5, random_k=6, quantile_bins=3, per_bin=2, seed=3)


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """tokens [S, T], activations [S, T, N] on a coarse grid, so that ties are common."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 50, size=(S, T))
    activations = rng.integers(-4, 7, size=(S, T, N)) * 0.5
    activations = (activations * rng.integers(1, 5, size=(S, 1, N)) / 4).astype(np.float32)
    activations[:, :, 0] = np.minimum(activations[:, :, 0], 2.0)
    activations[2, 0, 0] = activations[7, T - 1, 0] = 9.0  # tied maxima at both sequence ends
    activations[4, 1, 0] = 8.0
    activations[9, T - 2, 0] = 8.0
    activations[:, :, 5] = -np.abs(activations[:, :, 5]) - 0.5  # never positive: empty bins
    activations[:, :, 6] = 0.0  # constant
    return tokens, activations


def window_positions(centre: int, window: int = WINDOW) -> np.ndarray:
    """Written out independently of the miner: the rule from its docstring, with ifs."""
    if T <= window:
        return np.arange(T)
    start = centre - window // 2
    if start < 0:
        start = 0
    if start + window > T:
        start = T - window
    return np.arange(start, start + window)


def brute_top(activations, top_k, window=WINDOW):
    """Per neuron: list of (value, sequence, centre, window activations, window tokens idx)."""
    result = []
    for n in range(N):
        candidates = []
        for s in range(S):
            values = activations[s, :, n]
            best = values.max()
            centre = int(np.flatnonzero(values == best)[0])
            candidates.append((-float(best), s, centre))
        candidates.sort()
        result.append([(-v, s, c, window_positions(c, window)) for v, s, c in candidates[:top_k]])
    return result


def brute_random(activations, top_k, random_k, seed):
    """Per neuron: its random (sequence, centre) pairs: the seeded order of the sequences and a
    centre in each, the first `random_k` of those not among the neuron's top sequences."""
    rng = np.random.default_rng(seed)
    candidates = min(S, top_k + random_k)
    sequences, centres = rng.permutation(S)[:candidates], rng.integers(0, T, size=candidates)
    result = []
    for top in brute_top(activations, top_k):
        taken = {s for _, s, _, _ in top}
        free = [(int(s), int(c)) for s, c in zip(sequences, centres, strict=True)
                if s not in taken]
        result.append(free[:random_k])
    return result


def taken_sequences(activations, config=CONFIG):
    """Per neuron, the sequences its top and random records hold (none of its bins may)."""
    top = brute_top(activations, config["top_k"])
    random = brute_random(activations, config["top_k"], config["random_k"], config["seed"])
    return [{s for _, s, _, _ in top[n]} | {s for s, _ in random[n]} for n in range(N)]


def brute_bins(activations, bins, per_bin, seed):
    """Per neuron and bin: sampled (sequence, centre) in priority order, and the edges."""
    result, edges_all = [], []
    taken = taken_sequences(activations)
    for n in range(N):
        top = float(activations[:, :, n].max())
        edges = max(top, 0.0) * np.arange(bins + 1) / bins
        edges_all.append(edges)
        members = [[] for _ in range(bins)]
        for s in range(S):
            if s in taken[n]:
                continue
            values = activations[s, :, n]
            best = float(values.max())
            priority = np.random.default_rng([seed, s]).random(N)[n]
            for j in range(bins):
                if edges[j] < best <= edges[j + 1]:
                    members[j].append((priority, s, int(np.argmax(values))))
        result.append([sorted(m)[:per_bin] for m in members])
    return result, np.array(edges_all)


def mine(tokens, activations, batch_size, order=None, **config):
    miner = RecordMiner(N, T, S, **{**CONFIG, **config})
    order = np.arange(S) if order is None else np.asarray(order)
    for observe in (miner.observe, miner.observe_second_pass):
        for start in range(0, S, batch_size):
            rows = order[start:start + batch_size]
            observe(rows, tokens[rows], activations[rows])
        if not miner.needs_second_pass():
            break
    return miner


def decode(token_id: int) -> str:
    return f"<{token_id}>"


def test_top_records_match_brute_force():
    tokens, activations = make_data()
    miner = mine(tokens, activations, batch_size=4)
    top = miner.top_records()
    for n, expected in enumerate(brute_top(activations, CONFIG["top_k"])):
        assert top["sequence"][:, n].tolist() == [s for _, s, _, _ in expected]
        assert len(set(top["sequence"][:, n].tolist())) == CONFIG["top_k"]
        for k, (value, s, centre, positions) in enumerate(expected):
            assert top["activation"][k, n] == value
            assert top["centre"][k, n] == centre
            np.testing.assert_array_equal(top["window_activations"][k, n],
                                          activations[s, positions, n])
            np.testing.assert_array_equal(top["window_tokens"][k, n], tokens[s, positions])
    # The planted tie: both 9.0 maxima, lower sequence first; centres at the two sequence ends.
    assert top["sequence"][:2, 0].tolist() == [2, 7]
    assert top["centre"][:2, 0].tolist() == [0, T - 1]
    np.testing.assert_array_equal(top["window_tokens"][0, 0], tokens[2, :WINDOW])
    np.testing.assert_array_equal(top["window_tokens"][1, 0], tokens[7, T - WINDOW:])


def test_top_k_larger_than_stream_and_window_longer_than_sequence():
    tokens, activations = make_data()
    miner = mine(tokens, activations, batch_size=4, window=64, top_k=20, quantile_bins=0)
    assert not miner.needs_second_pass()
    records = list(miner.neuron_records(0, range(N), decode))
    for n, expected in enumerate(brute_top(activations, 20, window=64)):
        assert len(records[n].most_positive_activation_records) == S
        for record, (_, s, _, positions) in zip(records[n].most_positive_activation_records,
                                                expected, strict=True):
            np.testing.assert_array_equal(positions, np.arange(T))
            assert record.activations == activations[s, :, n].tolist()
            assert record.tokens == [decode(t) for t in tokens[s]]
        assert records[n].random_sample_by_quantile is None
        assert records[n].quantile_boundaries is None


def test_random_records_match_brute_force_choice():
    tokens, activations = make_data()
    miner = mine(tokens, activations, batch_size=4)
    expected = brute_random(activations, CONFIG["top_k"], CONFIG["random_k"], CONFIG["seed"])
    records = list(miner.neuron_records(1, range(N), decode))
    random = miner.random_records()
    for n in range(N):
        assert len(records[n].random_sample) == CONFIG["random_k"]  # S >= top_k + random_k
        assert random["sequence"][:, n].tolist() == [s for s, _ in expected[n]]
        for record, (s, centre) in zip(records[n].random_sample, expected[n], strict=True):
            positions = window_positions(centre)
            assert record.activations == activations[s, positions, n].tolist()
            assert record.tokens == [decode(t) for t in tokens[s, positions]]
    # Random records differ between neurons only where their top records do.
    assert len({tuple(random["sequence"][:, n]) for n in range(N)}) > 1


def test_random_records_run_short_only_when_the_text_does():
    """With fewer than top_k + random_k sequences a neuron keeps those its top records leave."""
    tokens, activations = make_data()
    miner = mine(tokens, activations, batch_size=4, top_k=9, random_k=6, quantile_bins=0)
    for n, record in enumerate(miner.neuron_records(0, range(N), decode)):
        sequences = set(miner.top_records()["sequence"][:, n]) | set(
            miner.random_records()["sequence"][:, n])
        assert len(record.random_sample) == S - 9 and sequences == set(range(S)) | {-1}


def test_quantile_bins_match_brute_force_reservoir():
    tokens, activations = make_data()
    miner = mine(tokens, activations, batch_size=4)
    expected, edges = brute_bins(activations, CONFIG["quantile_bins"], CONFIG["per_bin"],
                                 CONFIG["seed"])
    np.testing.assert_allclose(miner.quantile_boundaries(), edges, rtol=0, atol=0)
    binned = miner.quantile_records()
    records = list(miner.neuron_records(1, range(N), decode))
    population = np.zeros(CONFIG["quantile_bins"], int)
    for n in range(N):
        assert records[n].quantile_boundaries == edges[n].tolist()
        for j in range(CONFIG["quantile_bins"]):
            samples = records[n].random_sample_by_quantile[j]
            assert len(samples) == len(expected[n][j])
            population[j] += len(expected[n][j])
            for k, (_, s, centre) in enumerate(expected[n][j]):
                assert binned["sequence"][k, j, n] == s
                assert binned["centre"][k, j, n] == centre
                positions = window_positions(centre)
                assert samples[k].activations == activations[s, positions, n].tolist()
                assert samples[k].tokens == [decode(t) for t in tokens[s, positions]]
                assert edges[n, j] < max(samples[k].activations) <= edges[n, j + 1]
    assert population.sum() > 0
    # counts are min(per_bin, population), checked against a direct count
    taken = taken_sequences(activations)
    for n in range(N):
        sequence_max = activations[:, :, n].max(axis=1)
        free = ~np.isin(np.arange(S), list(taken[n]))
        for j in range(CONFIG["quantile_bins"]):
            inside = np.count_nonzero((sequence_max > edges[n, j])
                                      & (sequence_max <= edges[n, j + 1]) & free)
            assert len(records[n].random_sample_by_quantile[j]) == min(CONFIG["per_bin"], inside)
    assert all(samples == [] for samples in records[5].random_sample_by_quantile)
    assert all(samples == [] for samples in records[6].random_sample_by_quantile)


def test_statistics_match_numpy():
    tokens, activations = make_data()
    miner = mine(tokens, activations, batch_size=4)
    values = activations.reshape(-1, N).astype(np.float64)
    mean, variance = values.mean(axis=0), values.var(axis=0)
    centred = values - mean
    stats = miner.neuron_statistics()
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats["variance"], variance, rtol=1e-12, atol=1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        skewness = (centred**3).mean(axis=0) / variance**1.5
        kurtosis = (centred**4).mean(axis=0) / variance**2 - 3.0
    np.testing.assert_allclose(stats["skewness"][:6], skewness[:6], rtol=1e-10)
    np.testing.assert_allclose(stats["kurtosis"][:6], kurtosis[:6], rtol=1e-10)
    assert np.isnan(stats["skewness"][6]) and np.isnan(stats["kurtosis"][6])
    np.testing.assert_array_equal(stats["max"], values.max(axis=0))
    np.testing.assert_array_equal(stats["firing_frequency"], (values > 0).mean(axis=0))
    np.testing.assert_array_equal(stats["count"], np.full(N, S * T))
    record = next(miner.neuron_records(2, [3], decode))
    assert (record.mean, record.variance) == (stats["mean"][3], stats["variance"][3])
    assert (record.skewness, record.kurtosis) == (stats["skewness"][3], stats["kurtosis"][3])
    assert record.neuron_id.layer_index == 2 and record.neuron_id.neuron_index == 3


def test_statistics_stay_accurate_with_a_large_offset():
    rng = np.random.default_rng(1)
    activations = (1e4 + rng.standard_normal((S, T, N))).astype(np.float32)
    miner = mine(np.zeros((S, T), int), activations, batch_size=3, quantile_bins=0)
    values = activations.reshape(-1, N).astype(np.float64)
    centred = values - values.mean(axis=0)
    expected = (centred**4).mean(axis=0) / values.var(axis=0) ** 2 - 3
    np.testing.assert_allclose(miner.neuron_statistics()["kurtosis"], expected, rtol=1e-8)


def assert_same_records(a: RecordMiner, b: RecordMiner) -> None:
    for name in ("top_records", "random_records", "quantile_records"):
        for key, value in getattr(a, name)().items():
            np.testing.assert_array_equal(value, getattr(b, name)()[key], err_msg=key)
    for key, value in a.neuron_statistics().items():
        np.testing.assert_allclose(value, b.neuron_statistics()[key], rtol=1e-12, atol=1e-12)


def test_results_do_not_depend_on_batching():
    tokens, activations = make_data()
    reference = mine(tokens, activations, batch_size=4)
    for batch_size in (1, 13):
        assert_same_records(reference, mine(tokens, activations, batch_size=batch_size))
    shuffled = np.random.default_rng(5).permutation(S)
    assert_same_records(reference, mine(tokens, activations, batch_size=5, order=shuffled))


def test_seed_changes_the_random_records():
    tokens, activations = make_data()
    a = mine(tokens, activations, batch_size=4, seed=0)
    b = mine(tokens, activations, batch_size=4, seed=1)
    assert not (np.array_equal(a.random_records()["sequence"], b.random_records()["sequence"])
                and np.array_equal(a.random_records()["centre"], b.random_records()["centre"]))
    np.testing.assert_array_equal(a.top_records()["sequence"], b.top_records()["sequence"])


def test_an_empty_batch_is_a_no_op_and_records_round_trip_through_json():
    tokens, activations = make_data()
    miner = RecordMiner(N, T, S, **CONFIG)
    miner.observe(np.arange(6), tokens[:6], activations[:6])
    miner.observe(np.arange(0), tokens[:0], activations[:0])
    np.testing.assert_array_equal(miner.missing_sequences(), np.arange(6, S))
    miner.observe(np.arange(6, S), tokens[6:], activations[6:])
    miner.observe_second_pass(np.arange(S), tokens, activations)
    assert_same_records(mine(tokens, activations, batch_size=4), miner)
    json_text = to_json(list(miner.neuron_records(0, [0], decode)))
    assert from_json(json_text)[0].most_positive_activation_records[0].activations[0] == 9.0
    json.loads(json_text)


def test_bfloat16_activations_are_accepted():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    tokens, activations = make_data()
    a = mine(tokens, activations, batch_size=4)
    b = mine(tokens, activations.astype(ml_dtypes.bfloat16), batch_size=4)
    assert_same_records(a, b)  # the grid values are exact in bfloat16


def test_misuse_is_reported():
    tokens, activations = make_data()
    miner = RecordMiner(N, T, S, **CONFIG)
    miner.observe(np.arange(2), tokens[:2], activations[:2])
    with pytest.raises(ValueError, match="sequence 1 observed twice"):
        miner.observe(np.array([1, 2]), tokens[1:3], activations[1:3])
    with pytest.raises(ValueError, match="expected"):
        miner.observe(np.array([3]), tokens[3:4, :5], activations[3:4, :5])
    with pytest.raises(RuntimeError, match="pass 1 is incomplete"):
        miner.observe_second_pass(np.arange(2), tokens[:2], activations[:2])
    with pytest.raises(RuntimeError, match="mining is incomplete"):
        next(miner.neuron_records(0, [0], decode))
