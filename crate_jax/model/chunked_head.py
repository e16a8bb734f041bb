"""The tied head and its mean next-token cross-entropy, a block of positions at a time
(`model.head_impl='chunked'`): how the training loss is computed, not what.

With `head_impl='logits'` a train step holds the logits `[batch, seq, vocab]` whole (at `tiny`'s
vocab 8192, batch 16 x seq 256: 128 MiB of float32), and the softmax, the loss and the backward
pass each stream them through memory for a few operations per element. Here the loss and its
gradient are computed together, one block of positions at a time, so a block's logits stay in
the cache: the loss is a scalar, so its forward pass can already produce the gradients with
respect to the hidden states and the embedding, and the backward pass only scales them by the
incoming cotangent. No logits are recomputed, and none are kept for the backward pass.

The same function as the logits path (`losses.next_token_loss` of `token_embedding.attend`);
the embedding's gradient is summed block by block, so values agree to float rounding, not bit
for bit. Blocks split the sequence axis, never the batch, so a batch split over devices stays
split (`train/step.py` holds the hidden states so).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Rows (positions of the whole batch) per block: [256, 8192] float32 logits are 8 MiB. Of 128
# to 2,048 rows, 128 to 512 were fastest on a 2-core CPU (tiny, batch 16 x seq 256, vocab 8192).
BLOCK_ROWS = 256


def resolve_head_impl(requested: str, platform: str) -> str:
    """`logits` or `chunked` for a `model.head_impl` on a device of `platform` (cpu, gpu, tpu):
    `auto` is `chunked` on a CPU (the train step 1.24x (CRATE) and 1.20x (GPT-2) at vocab 8192,
    seq 256; within 5% either way at the planted study's vocab 128: `benchmarks/README.md`) and
    `logits` elsewhere (not measured on an accelerator)."""
    if requested != "auto":
        return requested
    return "chunked" if platform == "cpu" else "logits"


def head_impl_on_this_machine(requested: str) -> str:
    """`resolve_head_impl` for the default device, the one a jitted train step runs on."""
    return resolve_head_impl(requested, jax.devices()[0].platform)


def block_length(seq_len: int, batch: int, block_rows: int = BLOCK_ROWS) -> int:
    """The longest run of positions, dividing `seq_len`, whose `batch` rows fit `block_rows`
    (at least one position)."""
    fitting = [length for length in range(1, seq_len + 1)
               if seq_len % length == 0 and length * batch <= block_rows]
    return max(fitting, default=1)


def chunked_next_token_loss(hidden: jax.Array, embedding: jax.Array, targets: jax.Array,
                            block_rows: int = BLOCK_ROWS) -> jax.Array:
    """Mean cross-entropy (nats) of `targets [batch, seq]` under the tied head's logits
    `hidden [batch, seq, d] @ embedding [vocab, d]^T`, differentiable in `hidden` and
    `embedding`.

    `hidden` is the final LayerNorm's output in the compute dtype; the embedding (a float32
    parameter) is cast to it, and the logits taken to float32, as `nn.Embed.attend` and the
    model's head do. Each block is `block_rows` positions of the batch or fewer.
    """
    batch, seq_len, _ = hidden.shape
    return _mean_loss(hidden, embedding, targets, block_length(seq_len, batch, block_rows))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _mean_loss(hidden, embedding, targets, length):
    return _loss_and_gradients(hidden, embedding, targets, length)[0]


def _loss_and_gradients(hidden, embedding, targets, length):
    """(mean loss, (its gradient in `hidden`, in `embedding`)), a block of `length` positions
    of every sequence at a time."""
    batch, seq_len, _ = hidden.shape
    blocks = seq_len // length
    weights = embedding.astype(hidden.dtype)

    def by_block(array):  # [batch, seq, ...] -> [blocks, batch, length, ...]
        return jnp.swapaxes(array.reshape(batch, blocks, length, *array.shape[2:]), 0, 1)

    def block(embedding_gradient, inputs):
        x, y = inputs
        logits = jnp.einsum("bld,vd->blv", x, weights).astype(jnp.float32)
        log_norm = jax.nn.logsumexp(logits, axis=-1)
        target_logits = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        # d(loss of a position) / d(its logits): the softmax minus the one-hot target.
        logit_gradient = (jnp.exp(logits - log_norm[..., None])
                          - jax.nn.one_hot(y, logits.shape[-1], dtype=jnp.float32)
                          ).astype(x.dtype)
        hidden_gradient = jnp.einsum("blv,vd->bld", logit_gradient, weights)
        embedding_gradient += jnp.einsum("bld,blv->dv", x, logit_gradient,
                                         preferred_element_type=jnp.float32)
        return embedding_gradient, ((log_norm - target_logits).sum(), hidden_gradient)

    embedding_gradient, (losses, hidden_gradients) = jax.lax.scan(
        block, jnp.zeros(embedding.shape[::-1], jnp.float32),
        (by_block(hidden), by_block(targets)))
    count = batch * seq_len
    hidden_gradient = jnp.swapaxes(hidden_gradients, 0, 1).reshape(hidden.shape) / count
    return losses.sum() / count, (hidden_gradient.astype(hidden.dtype),
                                  (embedding_gradient.T / count).astype(embedding.dtype))


def _backward(length, gradients, cotangent):
    hidden_gradient, embedding_gradient = gradients
    return ((cotangent * hidden_gradient).astype(hidden_gradient.dtype),
            cotangent * embedding_gradient, None)


# The forward pass's residuals are the gradients themselves.
_mean_loss.defvjp(_loss_and_gradients, _backward)
