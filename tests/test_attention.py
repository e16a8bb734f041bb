"""MSSA and standard attention: against NumPy, and MSSA == MHSA when Wq = Wk = Wv = U."""

import jax
import numpy as np

from crate_jax.model import MultiHeadSelfAttention, SubspaceSelfAttention

HEADS, WIDTH = 4, 32


def numpy_causal_attention(x, wq, wk, wv, w_out, b_out):
    """x [B,T,d]; w* [d,H,Dh]; w_out [H,Dh,d]. Softmax(q k^T / sqrt(Dh)) over keys <= query."""
    q, k, v = (np.einsum("btd,dhe->bthe", x, w) for w in (wq, wk, wv))
    seq, head_dim = x.shape[1], wq.shape[-1]
    scores = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(head_dim)
    scores = np.where(np.tril(np.ones((seq, seq), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhqk,bkhe->bqhe", weights, v)
    return np.einsum("bqhe,hed->bqd", heads, w_out) + b_out


def _inputs():
    return jax.random.normal(jax.random.key(3), (2, 9, WIDTH))


def test_mssa_matches_numpy_with_one_shared_projection():
    module = SubspaceSelfAttention(num_heads=HEADS)
    x = _inputs()
    params = module.init(jax.random.key(0), x)["params"]
    assert set(params) == {"subspace", "out"}
    assert set(params["subspace"]) == {"kernel"}, "U has no bias"
    assert set(params["out"]) == {"kernel", "bias"}
    u = np.asarray(params["subspace"]["kernel"], np.float64)
    assert u.shape == (WIDTH, HEADS, WIDTH // HEADS)
    bias = np.random.default_rng(0).normal(size=WIDTH)  # a non-zero bias must be applied
    params = {**params, "out": {**params["out"], "bias": bias.astype(np.float32)}}
    expected = numpy_causal_attention(np.asarray(x, np.float64), u, u, u,
                                      np.asarray(params["out"]["kernel"], np.float64), bias)
    np.testing.assert_allclose(module.apply({"params": params}, x), expected,
                               rtol=1e-4, atol=1e-5)


def test_mssa_equals_standard_attention_when_query_key_value_share_u():
    x = _inputs()
    mssa = SubspaceSelfAttention(num_heads=HEADS)
    mhsa = MultiHeadSelfAttention(num_heads=HEADS, use_bias=True)
    mssa_params = mssa.init(jax.random.key(0), x)["params"]
    mhsa_params = mhsa.init(jax.random.key(1), x)["params"]
    u = mssa_params["subspace"]["kernel"]
    shared = {"kernel": u, "bias": np.zeros(u.shape[1:], np.float32)}
    mhsa_params = {"query": shared, "key": shared, "value": shared, "out": mssa_params["out"]}
    np.testing.assert_allclose(mhsa.apply({"params": mhsa_params}, x),
                               mssa.apply({"params": mssa_params}, x), rtol=1e-6, atol=1e-6)
    # With independent q, k, v (its own init) standard attention is a different function.
    own = mhsa.init(jax.random.key(1), x)["params"]
    assert not np.allclose(mhsa.apply({"params": own}, x), mssa.apply({"params": mssa_params}, x))


def test_standard_attention_matches_numpy_and_respects_use_bias():
    x = _inputs()
    module = MultiHeadSelfAttention(num_heads=HEADS, use_bias=False)
    params = module.init(jax.random.key(0), x)["params"]
    assert all(set(params[name]) == {"kernel"} for name in ("query", "key", "value", "out"))
    w = {name: np.asarray(params[name]["kernel"], np.float64) for name in params}
    expected = numpy_causal_attention(np.asarray(x, np.float64), w["query"], w["key"],
                                      w["value"], w["out"], 0.0)
    np.testing.assert_allclose(module.apply({"params": params}, x), expected,
                               rtol=1e-4, atol=1e-5)
