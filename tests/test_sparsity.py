"""SparsityCounter against a brute-force count over the whole tensor."""

import math

import numpy as np
import pytest

from crate_jax.interp.activations.sparsity import SparsityCounter


def test_summary_matches_brute_force():
    rng = np.random.default_rng(0)
    eps = 1e-2
    activations = rng.standard_normal((6, 11, 5)).astype(np.float32)
    activations[rng.random(activations.shape) < 0.6] = 0.0
    activations[..., 1] = 0.0  # dead
    activations[..., 2] = np.where(activations[..., 2] != 0, 1e-3, 0.0)  # dead only with eps
    activations[0, 0, 3] = -eps  # exactly on the threshold counts as near zero

    counter = SparsityCounter(num_neurons=5, eps=eps)
    for batch in np.array_split(activations, 4):
        counter.observe(batch)
    summary = counter.summary()

    values = activations.reshape(-1, 5)
    assert summary == {
        "tokens": 66,
        "zero_fraction": float(np.mean(values == 0)),
        "mean_l0": float(np.mean(np.sum(values != 0, axis=1))),
        "dead_neurons": 1,
        "near_zero_fraction": float(np.mean(np.abs(values) <= eps)),
        "mean_l0_eps": float(np.mean(np.sum(np.abs(values) > eps, axis=1))),
        "dead_neurons_eps": 2,
        "eps": eps,
        "num_neurons": 5,
    }
    assert summary["zero_fraction"] < summary["near_zero_fraction"]


def test_empty_counter_and_bad_shapes():
    counter = SparsityCounter(num_neurons=3)
    summary = counter.summary()
    assert summary["tokens"] == 0 and math.isnan(summary["zero_fraction"])
    assert math.isnan(summary["mean_l0"]) and summary["dead_neurons"] == 3
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        counter.observe(np.zeros((2, 4)))
