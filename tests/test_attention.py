"""MSSA and standard attention: against NumPy, and MSSA == MHSA when Wq = Wk = Wv = U; which
attention kernel (`model.attention_impl`) each platform gets."""

import functools
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_helpers import REPO, tiny_config, with_data, workdir_with_data

from configs import crate
from crate_jax.model import (
    ConfigError,
    ModelConfig,
    MultiHeadSelfAttention,
    SubspaceSelfAttention,
    model_from_config,
)
from crate_jax.model.attention import (
    QUERY_BLOCK,
    attention_impl_on_this_machine,
    blockwise_causal_attention,
    resolve_attention_impl,
)
from crate_jax.train.loop import train_and_evaluate

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


# (platform, CUDA compute capability, dtype, head_dim) where cuDNN's flash attention cannot run.
NOT_CUDNN = {
    "cpu": ("cpu", None, jnp.bfloat16, 64),
    "tpu": ("tpu", None, jnp.bfloat16, 64),
    "v100 (pre-Ampere)": ("gpu", "7.0", jnp.bfloat16, 64),
    "h100 float32": ("gpu", "9.0", jnp.float32, 64),
    "a100 head_dim 192": ("gpu", "8.0", jnp.bfloat16, 192),
    "h100 head_dim 12": ("gpu", "9.0", jnp.bfloat16, 12),
    "rocm (no compute capability)": ("gpu", None, jnp.bfloat16, 64),
}


@pytest.mark.parametrize("where", list(NOT_CUDNN))
def test_auto_resolves_to_blockwise_on_a_cpu_and_xla_elsewhere_where_cudnn_cannot_run(where):
    expected = "blockwise" if NOT_CUDNN[where][0] == "cpu" else "xla"
    assert resolve_attention_impl("auto", *NOT_CUDNN[where]) == expected
    assert resolve_attention_impl("xla", *NOT_CUDNN[where]) == "xla"


@pytest.mark.parametrize("platform, capability, dtype, head_dim", [
    ("gpu", "9.0", jnp.bfloat16, 64),    # H100, CRATE-B's heads
    ("gpu", "9.0", jnp.float16, 256),    # Hopper allows head_dim up to 256
    ("gpu", "8.0", jnp.bfloat16, 128),   # A100
])
def test_auto_resolves_to_cudnn_on_ampere_and_later_in_half_precision(platform, capability, dtype,
                                                                      head_dim):
    assert resolve_attention_impl("auto", platform, capability, dtype, head_dim) == "cudnn"
    assert resolve_attention_impl("cudnn", platform, capability, dtype, head_dim) == "cudnn"


@pytest.mark.parametrize("where", list(NOT_CUDNN))
def test_forcing_cudnn_where_it_cannot_run_names_the_reason_and_the_fix(where):
    with pytest.raises(ConfigError, match=r"^model.attention_impl='cudnn' needs .*; "
                                          r"use model.attention_impl=auto"):
        resolve_attention_impl("cudnn", *NOT_CUDNN[where])


def test_auto_is_blockwise_on_this_cpu_and_gives_the_same_outputs_as_blockwise():
    assert attention_impl_on_this_machine("auto", jnp.bfloat16, 64) == "blockwise"
    x = _inputs()
    for module_type in (SubspaceSelfAttention, MultiHeadSelfAttention):
        auto = module_type(num_heads=HEADS)
        params = auto.init(jax.random.key(0), x)["params"]
        blockwise = module_type(num_heads=HEADS, attention_impl="blockwise")
        np.testing.assert_array_equal(auto.apply({"params": params}, x),
                                      blockwise.apply({"params": params}, x))


@pytest.mark.parametrize("where", [*NOT_CUDNN, "h100 bfloat16"])
def test_blockwise_is_taken_as_asked_on_every_device(where):
    device = {**NOT_CUDNN, "h100 bfloat16": ("gpu", "9.0", jnp.bfloat16, 64)}[where]
    assert resolve_attention_impl("blockwise", *device) == "blockwise"


@pytest.mark.parametrize("seq", [1, QUERY_BLOCK - 1, QUERY_BLOCK, 2 * QUERY_BLOCK + 5])
def test_blockwise_attention_is_xlas_function_forward_and_backward(seq):
    """Blocks of queries that skip the keys after them compute the same causal attention as XLA's
    whole masked score matrix, to float32 rounding, also where the last block is partial."""
    q, k, v, cotangent = (jax.random.normal(jax.random.key(i), (2, seq, HEADS, 8))
                          for i in range(4))

    def loss(kernel):
        return lambda q, k, v: (kernel(q, k, v) * cotangent).sum()
    xla = functools.partial(jax.nn.dot_product_attention, is_causal=True, implementation="xla")
    np.testing.assert_allclose(blockwise_causal_attention(q, k, v), xla(q, k, v), atol=2e-6)
    for ours, theirs in zip(jax.grad(loss(blockwise_causal_attention), (0, 1, 2))(q, k, v),
                            jax.grad(loss(xla), (0, 1, 2))(q, k, v), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_a_model_under_blockwise_attention_gives_xlas_logits():
    config = crate.get_config()
    config.model.update(vocab_size=64, max_len=2 * QUERY_BLOCK + 5)
    tokens = jax.random.randint(jax.random.key(1), (2, 2 * QUERY_BLOCK + 5), 0, 64)
    model = model_from_config(config)
    params = model.init(jax.random.key(0), tokens)
    config.model.attention_impl = "blockwise"
    blockwise = model_from_config(config)
    np.testing.assert_allclose(blockwise.apply(params, tokens), model.apply(params, tokens),
                               atol=1e-5)
    bf16 = jnp.asarray(np.asarray(jax.random.normal(jax.random.key(2), (1, 70, HEADS, 8))),
                       jnp.bfloat16)
    assert blockwise_causal_attention(bf16, bf16, bf16).dtype == jnp.bfloat16


def test_cudnn_on_this_cpu_is_a_config_error_at_model_build_and_at_trace():
    config = crate.get_config()
    assert config.model.attention_impl == "auto"
    config.model.attention_impl = "cudnn"
    with pytest.raises(ConfigError, match=r"model.attention_impl='cudnn' needs an NVIDIA GPU.*"
                                          r"the device is cpu"):
        model_from_config(config)
    module = SubspaceSelfAttention(num_heads=HEADS, attention_impl="cudnn")
    with pytest.raises(ConfigError, match="model.attention_impl='cudnn' needs an NVIDIA GPU"):
        module.init(jax.random.key(0), _inputs())


def test_cudnn_on_this_cpu_stops_the_run_with_one_fatal_line_before_any_work(tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "crate_jax.main", "--config=configs/crate.py",
         "--config.model.attention_impl=cudnn", f"--workdir={workdir}"],
        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "FATAL: model.attention_impl='cudnn' needs an NVIDIA GPU of compute capability >= 8.0 "
        "(Ampere or later) and model.dtype bfloat16, but the device is cpu; use "
        "model.attention_impl=auto (cuDNN where it can run, blockwise on a CPU, XLA elsewhere) "
        "or xla"]
    assert not workdir.exists()


def test_a_run_resumes_under_another_attention_impl(prepared, tmp_path):
    """The kernel is how the model is computed, not which model: a run trained with cuDNN on a GPU
    (or saved before the key existed) continues on a machine that resolves to XLA."""
    workdir = workdir_with_data(prepared, tmp_path)
    config = with_data(tiny_config(num_steps=2, checkpoint_every=2, log_every=1), prepared)
    config.model.attention_impl = "xla"
    train_and_evaluate(config, workdir)
    config.model.attention_impl = "auto"
    config.train.num_steps = 4
    assert train_and_evaluate(config, workdir)["step"] == 4


def test_unknown_attention_impl_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"model.attention_impl='cudn' is not one of auto, xla, "
                                          r"cudnn, blockwise \(did you mean 'cudnn'\?\)"):
        ModelConfig(attention_impl="cudn")


# conftest.py pins this process to the CPU, so the GPU comparison runs in a child process on the
# machine's default backend, and only where a CUDA plugin of jax is installed at all.
_CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")
_BOTH_KERNELS = """
import jax, jax.numpy as jnp, numpy as np
from crate_jax.model import SubspaceSelfAttention
from crate_jax.model.attention import attention_impl_on_this_machine
if attention_impl_on_this_machine("auto", jnp.bfloat16, 8) != "cudnn":
    print("no cudnn here")
    raise SystemExit(0)
x = jax.random.normal(jax.random.key(3), (2, 128, 64)).astype(jnp.bfloat16)
out = {}
for impl in ("xla", "cudnn"):
    module = SubspaceSelfAttention(num_heads=8, dtype=jnp.bfloat16, attention_impl=impl)
    params = module.init(jax.random.key(0), x)["params"]
    out[impl] = np.asarray(module.apply({"params": params}, x), np.float32)
np.testing.assert_allclose(out["cudnn"], out["xla"], rtol=2e-2, atol=2e-2)
print("agree")
"""


@pytest.mark.skipif(not any(importlib.util.find_spec(name) for name in _CUDA_PLUGINS),
                    reason="needs jax with CUDA (a GPU machine)")
def test_cudnn_and_xla_agree_within_bfloat16_tolerance_on_a_gpu():
    env = {key: value for key, value in os.environ.items() if key != "JAX_PLATFORMS"}
    result = subprocess.run([sys.executable, "-c", _BOTH_KERNELS], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() == "no cudnn here":
        pytest.skip("this machine's default device cannot run cuDNN flash attention")
    assert result.stdout.strip() == "agree"
