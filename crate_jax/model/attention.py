"""Causal self-attention in the two forms the ablation compares.

`SubspaceSelfAttention` is CRATE's MSSA: one projection U per head serves as query, key and value,
so each head compresses tokens against its own subspace. `MultiHeadSelfAttention` is GPT-2's,
with separate query, key and value projections. Both share the attention core and output
projection, so with Wq = Wk = Wv = U the two are the same function (a test checks this), and the
ablation changes exactly one thing.

The softmax itself is computed by one of three kernels (`model.attention_impl`):
`jax.nn.dot_product_attention` with XLA's unfused ops, which run everywhere; the same with cuDNN's
fused flash attention (1.8x the train step of CRATE-B on an H100 in bfloat16, issue 11), which runs
only on NVIDIA GPUs from Ampere on, in half precision; or `blockwise`, XLA ops over blocks of
queries that skip the masked keys after each block (CRATE's attention block, forward and backward,
about twice as fast as with XLA's on a 2-core CPU at seq 256: `benchmarks/README.md`,
`step_parts.py`). `auto` chooses at trace time from the device the model runs on: cuDNN where it
can run, `blockwise` on a CPU (faster there at every shape measured, seq 128 and 256), XLA's
elsewhere. `blockwise` and `xla` agree to float rounding, not bit for bit, so the README's
studies keep the kernel they were computed with (`configs/ablation.py`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from crate_jax.model.config import ConfigError
from crate_jax.model.initializers import DEFAULT_INIT
from crate_jax.model.steering import spliced, steered

ATTN_SITE = "attn"
# The key-value cache of generation (`decode=True`): keys and values of every position so far,
# `[batch, cache_length, heads, head_dim]`, in a collection of its own.
CACHE = "cache"

# What jax's cuDNN path (jax/_src/cudnn/fused_attention_stablehlo.py) and NVIDIA's support matrix
# require of flash attention: SM 8.0 (Ampere) or later, fp16/bf16 inputs, and a head dim that is
# a multiple of 8, at most 128 before Hopper (SM 9.0) and 256 from it.
CUDNN_MIN_COMPUTE_CAPABILITY = (8, 0)
CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _cudnn_unsupported(platform: str, compute_capability: str | None, dtype: jnp.dtype,
                       head_dim: int) -> str | None:
    """Why cuDNN flash attention cannot run with these inputs, or None when it can."""
    if platform != "gpu":
        return f"the device is {platform}"
    if compute_capability is None:
        return "the GPU reports no CUDA compute capability (it is not an NVIDIA GPU)"
    capability = tuple(int(part) for part in str(compute_capability).split("."))
    if capability < CUDNN_MIN_COMPUTE_CAPABILITY:
        return f"the GPU's compute capability is {compute_capability}"
    if jnp.dtype(dtype) not in CUDNN_DTYPES:
        return f"the attention inputs are {jnp.dtype(dtype).name} (model.dtype)"
    largest = 256 if capability >= (9, 0) else 128
    if head_dim % 8 or head_dim > largest:
        return f"the head dim is {head_dim} (cuDNN takes multiples of 8 up to {largest} here)"
    return None


def resolve_attention_impl(requested: str, platform: str, compute_capability: str | None,
                           dtype: jnp.dtype, head_dim: int) -> str:
    """The kernel the attention runs: 'xla' or 'cudnn' (of `jax.nn.dot_product_attention`), or
    'blockwise'.

    A pure function of the device's platform (`Device.platform`: cpu, gpu, tpu), its CUDA compute
    capability (`Device.compute_capability`, e.g. '9.0'; None off NVIDIA), the dtype of the
    attention inputs and the head dim, so it can be checked for any device on any machine.
    `auto` takes cuDNN wherever it can run, `blockwise` on a CPU, XLA's kernel elsewhere (TPUs,
    other GPUs, float32 on a GPU); `cudnn` where it cannot run is a ConfigError that says why,
    instead of an error from inside XLA's compiler.
    """
    if requested in ("xla", "blockwise"):
        return requested
    reason = _cudnn_unsupported(platform, compute_capability, dtype, head_dim)
    if reason is None:
        return "cudnn"
    if requested == "cudnn":
        raise ConfigError(
            "model.attention_impl='cudnn' needs an NVIDIA GPU of compute capability >= 8.0 "
            f"(Ampere or later) and model.dtype bfloat16, but {reason}; use "
            "model.attention_impl=auto (cuDNN where it can run, blockwise on a CPU, XLA "
            "elsewhere) or xla")
    return "blockwise" if platform == "cpu" else "xla"


def attention_impl_on_this_machine(requested: str, dtype: jnp.dtype, head_dim: int) -> str:
    """`resolve_attention_impl` for the default device, the one a jitted model runs on."""
    device = jax.devices()[0]
    return resolve_attention_impl(requested, device.platform,
                                  getattr(device, "compute_capability", None), dtype, head_dim)


def causal_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                     implementation: str = "auto") -> jax.Array:
    """Softmax attention with a causal mask and scale 1/sqrt(head_dim).

    Shapes are `[batch, seq, heads, head_dim]` in and out. `jax.nn.dot_product_attention`
    computes the softmax in float32 even for bfloat16 inputs; `implementation` is a
    `model.attention_impl`, resolved here, at trace time, for the device and the inputs' dtype.
    """
    kernel = attention_impl_on_this_machine(implementation, query.dtype, query.shape[-1])
    if kernel == "blockwise":
        return blockwise_causal_attention(query, key, value)
    return jax.nn.dot_product_attention(query, key, value, is_causal=True, implementation=kernel)


# Queries per block of `blockwise_causal_attention`: the fastest of 32, 64 and 128 for a train
# step's forward and backward at seq 256 on this project's 2-core CPU.
QUERY_BLOCK = 64


def blockwise_causal_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                               block: int = QUERY_BLOCK) -> jax.Array:
    """Causal softmax attention, `[batch, seq, heads, head_dim]` in and out, a block of queries
    at a time: block `i` attends to keys `0 .. end of block i` only, so the masked blocks above
    the diagonal are never computed (10 of the 16 blocks of scores at seq 256 are). The mask
    applies within the diagonal block. Scores and softmax in float32, as
    `jax.nn.dot_product_attention` computes them; the same function to float rounding."""
    scale = query.shape[-1] ** -0.5
    # Head-major once, `[batch, heads, seq, head_dim]`: each block's products are then plain
    # batched matrix products (a quarter faster forward and backward than transposing per block).
    query, key, value = (jnp.swapaxes(array, 1, 2) for array in (query, key, value))
    outputs = []
    for start in range(0, query.shape[2], block):
        end = min(start + block, query.shape[2])
        scores = jnp.einsum("bhqd,bhkd->bhqk", query[:, :, start:end], key[:, :, :end],
                            preferred_element_type=jnp.float32) * scale
        visible = jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :]
        scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
        outputs.append(jnp.einsum("bhqk,bhkd->bhqd", weights, value[:, :, :end]))
    return jnp.swapaxes(jnp.concatenate(outputs, axis=2), 1, 2)


def cached_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                     positions: jax.Array) -> jax.Array:
    """Attention of queries at absolute `positions` (`[seq]`) over a whole key-value cache
    (`[batch, cache_length, heads, head_dim]`), each query seeing the keys at or before its own
    position. XLA's kernel: cuDNN's flash attention takes no such mask."""
    visible = jnp.arange(key.shape[1])[None, :] <= positions[:, None]   # [seq, cache_length]
    return jax.nn.dot_product_attention(query, key, value, mask=visible[None, None],
                                        implementation="xla")


class _CausalSelfAttention(nn.Module):
    """Shared core: heads -> captured `attn` neurons -> output projection with optional bias.

    Subclasses only say how query, key and value are projected from the input.
    With `decode=True` the keys and values of `x` go into the `cache` collection (created, zero,
    of `cache_length` positions on the first call) at `positions`, and the queries attend over
    the whole cache: a prompt is one call, then each new token one more.
    """

    num_heads: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    out_init: nn.initializers.Initializer = DEFAULT_INIT
    attention_impl: str = "auto"
    cache_length: int = 0

    def project_heads(self, x: jax.Array, name: str, use_bias: bool) -> jax.Array:
        """A Dense map `[batch, seq, d] -> [batch, seq, heads, head_dim]`."""
        head_dim = x.shape[-1] // self.num_heads
        return nn.DenseGeneral((self.num_heads, head_dim), use_bias=use_bias, dtype=self.dtype,
                               kernel_init=DEFAULT_INIT, name=name)(x)

    def query_key_value(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        raise NotImplementedError

    def cached_key_value(self, key: jax.Array, value: jax.Array,
                         start: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The cache with `key` and `value` written from position `start` on; one array when
        key and value are one projection (MSSA's U x)."""
        batch, _, heads, head_dim = key.shape
        shape = (batch, self.cache_length, heads, head_dim)
        at = (0, start, 0, 0)
        cached = []
        names = (("cached_key", key), ("cached_value", value))
        for name, array in names[:1 if value is key else 2]:
            variable = self.variable(CACHE, name, jnp.zeros, shape, array.dtype)
            variable.value = jax.lax.dynamic_update_slice(variable.value, array, at)
            cached.append(variable.value)
        return cached[0], cached[-1]

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array | None = None,
                 decode: bool = False) -> jax.Array:
        """`x`: `[batch, seq, d]` (already layer-normed) -> `[batch, seq, d]`. `positions`
        (`[seq]`, absolute; None: 0..seq-1) place the cache writes and any steering."""
        batch, seq, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads={self.num_heads}")
        query, key, value = self.query_key_value(x)
        if decode:
            positions = jnp.arange(seq) if positions is None else positions
            key, value = self.cached_key_value(key, value, positions[0])
            heads = cached_attention(query, key, value, positions)
        else:
            heads = causal_attention(query, key, value, self.attention_impl)
        # Per-head outputs before mixing, concatenated over heads: `[batch, seq, d]`.
        concatenated = steered(self, ATTN_SITE, heads.reshape(batch, seq, width), positions)
        concatenated = spliced(self, ATTN_SITE, concatenated)
        heads = concatenated.reshape(heads.shape)
        self.sow(f"neurons_{ATTN_SITE}", ATTN_SITE, concatenated)
        return nn.DenseGeneral(width, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype,
                               kernel_init=self.out_init, name="out")(heads)


class SubspaceSelfAttention(_CausalSelfAttention):
    """MSSA: the bias-free projection U (`subspace`) is used as query, key and value, so its
    cache holds U x once."""

    def query_key_value(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        projected = self.project_heads(x, "subspace", use_bias=False)
        return projected, projected, projected


class MultiHeadSelfAttention(_CausalSelfAttention):
    """Standard multi-head self-attention (GPT-2): separate query, key and value projections."""

    def query_key_value(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        return tuple(self.project_heads(x, name, use_bias=self.use_bias)
                     for name in ("query", "key", "value"))
