"""Sparse autoencoders over a model's activations, as pure functions of a parameter dict.

Three kinds, all `x -> z (latents) -> x_hat`, with a pre-encoder bias `b_pre` subtracted before
the encoder and added back after the decoder, and decoder rows (one direction per latent) kept at
unit norm:
- `topk` (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): each token keeps its `k`
  largest pre-activations (then ReLU), so L0 <= k by construction; dead latents are revived by the
  AuxK loss (the error left by the live latents, reconstructed by the `aux_k` largest dead ones).
- `batchtopk` (Bussmann et al. 2024): the batch keeps its `k * tokens` largest activations, so k
  is an average per token; inference uses a threshold, the running mean of the smallest kept
  activation, so a token's latents do not depend on its batch.
- `relu_l1`: ReLU latents and an L1 penalty (the paper's SAEs, after Conmy's `sae`; Anthropic's
  2023 recipe), kept to compare with its numbers.

Activations are normalised before encoding by one scale per SAE (`scale`, fixed from a sample so
that E||x|| = sqrt(d)), stored with it; `reconstruct` maps back to the model's units. The loss's
reconstruction term is normalised by the batch's variance, so it is the fraction of variance
unexplained.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

SAE_KINDS = ("topk", "batchtopk", "relu_l1")
# Gao et al.: the AuxK term's weight.
AUX_COEFFICIENT = 1.0 / 32
# BatchTopK's inference threshold: an exponential mean of each batch's smallest kept activation.
THRESHOLD_DECAY = 0.99


@dataclasses.dataclass(frozen=True)
class SaeSettings:
    """One SAE's hyperparameters (hashable: a static argument of the jitted step)."""

    kind: str
    width: int                 # latents
    k: int = 32                # topk: per token; batchtopk: mean per token
    l1_coefficient: float = 1e-3  # relu_l1 only
    aux_k: int = 64            # dead latents AuxK reconstructs with (0: no AuxK)
    dead_after_tokens: int = 100_000  # a latent silent this long is dead (AuxK, dead fraction)

    def __post_init__(self) -> None:
        if self.kind not in SAE_KINDS:
            raise ValueError(f"sae kind {self.kind!r} is not one of {', '.join(SAE_KINDS)}")
        if self.kind != "relu_l1" and not 0 < self.k <= self.width:
            raise ValueError(f"sae k={self.k} must be in 1..width={self.width}")


def init_params(key: jax.Array, sample: jax.Array, settings: SaeSettings) -> dict:
    """Parameters for inputs like `sample` (`[tokens, d]`, already normalised): decoder rows
    random unit vectors, the encoder their transpose (Gao et al.), `b_pre` the sample's geometric
    median, `b_enc` zero."""
    d = sample.shape[-1]
    decoder = jax.random.normal(key, (settings.width, d), jnp.float32)
    decoder = unit_rows(decoder)
    return {"b_pre": geometric_median(sample), "encoder": decoder.T,
            "b_enc": jnp.zeros((settings.width,), jnp.float32), "decoder": decoder}


def input_scale(sample: jax.Array) -> jax.Array:
    """The factor that brings the sample's mean norm to sqrt(d)."""
    mean_norm = jnp.mean(jnp.linalg.norm(sample, axis=-1))
    return jnp.sqrt(sample.shape[-1]) / jnp.maximum(mean_norm, 1e-12)


def geometric_median(points: jax.Array, iterations: int = 30) -> jax.Array:
    """Weiszfeld's iteration from the mean: the point minimising the summed distances."""
    median = jnp.mean(points, axis=0)

    def step(current, _):
        distances = jnp.maximum(jnp.linalg.norm(points - current, axis=-1), 1e-8)
        weights = 1.0 / distances
        return (weights[:, None] * points).sum(0) / weights.sum(), None

    median, _ = jax.lax.scan(step, median, None, length=iterations)
    return median


def unit_rows(matrix: jax.Array) -> jax.Array:
    return matrix / jnp.maximum(jnp.linalg.norm(matrix, axis=-1, keepdims=True), 1e-12)


def pre_activations(params: dict, x: jax.Array) -> jax.Array:
    return (x - params["b_pre"]) @ params["encoder"] + params["b_enc"]


def _top_k_per_token(pre: jax.Array, k: int) -> jax.Array:
    """`pre` with all but each row's k largest entries zeroed, then ReLU."""
    values, indices = jax.lax.top_k(pre, k)
    rows = jnp.arange(pre.shape[0])[:, None]
    return jnp.zeros_like(pre).at[rows, indices].set(jax.nn.relu(values))


def _top_k_per_batch(pre: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """(latents keeping the batch's `k * tokens` largest positive activations, the smallest
    kept one)."""
    positive = jax.nn.relu(pre)
    kept = jax.lax.top_k(positive.ravel(), k * pre.shape[0])[0]
    smallest = kept[-1]
    return jnp.where(positive >= jnp.maximum(smallest, 1e-12), positive, 0.0), smallest


def encode(params: dict, x: jax.Array, settings: SaeSettings,
           threshold: jax.Array | None = None) -> jax.Array:
    """Latents `[tokens, width]` of normalised `x` (`[tokens, d]`) at inference: BatchTopK
    applies its learned `threshold`."""
    pre = pre_activations(params, x)
    if settings.kind == "topk":
        return _top_k_per_token(pre, settings.k)
    if settings.kind == "batchtopk":
        return jnp.where(pre > threshold, pre, 0.0)
    return jax.nn.relu(pre)


def decode(params: dict, latents: jax.Array) -> jax.Array:
    return latents @ params["decoder"] + params["b_pre"]


def reconstruct(params: dict, scale: jax.Array, threshold: jax.Array, activations: jax.Array,
                settings: SaeSettings) -> jax.Array:
    """The SAE's reconstruction of `activations` (`[..., d]`, the model's units), what splicing
    puts in their place."""
    shape = activations.shape
    x = activations.reshape(-1, shape[-1]).astype(jnp.float32) * scale
    x_hat = decode(params, encode(params, x, settings, threshold)) / scale
    return x_hat.reshape(shape).astype(activations.dtype)


def training_loss(params: dict, x: jax.Array, dead: jax.Array,
                  settings: SaeSettings) -> tuple[jax.Array, dict]:
    """(loss, {fvu, l0, aux, l1, latents, smallest_kept}) of a batch `x` (`[tokens, d]`,
    normalised); `dead` (`[width]` bool) marks the latents AuxK may use."""
    pre = pre_activations(params, x)
    smallest = jnp.zeros(())
    if settings.kind == "topk":
        latents = _top_k_per_token(pre, settings.k)
    elif settings.kind == "batchtopk":
        latents, smallest = _top_k_per_batch(pre, settings.k)
    else:
        latents = jax.nn.relu(pre)
    x_hat = decode(params, latents)
    variance = jnp.maximum(jnp.sum((x - x.mean(0)) ** 2), 1e-12)
    fvu = jnp.sum((x - x_hat) ** 2) / variance
    loss = fvu
    l1 = jnp.sum(latents) / x.shape[0]  # decoder rows are unit norm: sum_i z_i ||d_i||
    if settings.kind == "relu_l1":
        loss = loss + settings.l1_coefficient * l1
    aux = jnp.zeros(())
    if settings.kind != "relu_l1" and settings.aux_k > 0:
        aux = _aux_k_loss(params, pre, dead, jax.lax.stop_gradient(x - x_hat), variance,
                          min(settings.aux_k, settings.width))
        loss = loss + AUX_COEFFICIENT * aux
    l0 = jnp.mean(jnp.sum(latents > 0, axis=-1))
    return loss, {"fvu": fvu, "l0": l0, "aux": aux, "l1": l1, "latents": latents,
                  "smallest_kept": smallest}


def _aux_k_loss(params: dict, pre: jax.Array, dead: jax.Array, error: jax.Array,
                variance: jax.Array, aux_k: int) -> jax.Array:
    """How well the `aux_k` largest dead latents reconstruct the error the live ones leave: its
    gradient reaches only dead latents, pulling them back to where the data is. Zero when none
    is dead."""
    masked = jnp.where(dead, pre, -jnp.inf)
    values, indices = jax.lax.top_k(masked, aux_k)
    rows = jnp.arange(pre.shape[0])[:, None]
    latents = jnp.zeros_like(pre).at[rows, indices].set(jax.nn.relu(values))
    error_hat = latents @ params["decoder"]
    return jnp.where(dead.any(), jnp.sum((error - error_hat) ** 2) / variance, 0.0)


def without_parallel_component(gradient: jax.Array, decoder: jax.Array) -> jax.Array:
    """The decoder gradient less its component along each (unit) row: the step then moves rows
    along the sphere, which the renormalisation after it would otherwise partly undo."""
    return gradient - jnp.sum(gradient * decoder, axis=-1, keepdims=True) * decoder


def default_aux_k(d: int) -> int:
    """Gao et al. use 512 for d = 768-sized inputs; a power of two near d / 2 elsewhere."""
    return 2 ** max(0, round(math.log2(max(1, d // 2))))
