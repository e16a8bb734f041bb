"""Model FLOPs per token and model FLOPs utilization (MFU), as issue 11 defines them.

Only matmuls are counted, each once, at 2 m n FLOPs per token for an `m x n` weight (a
multiply and an add per entry); layer norms, softmax, activations, biases and the embedding
lookups are left out, as in nanoGPT's `estimate_mfu` and PaLM's appendix B. Per layer, forward:

- attention projections: MSSA has two `d x d` matmuls (U, shared by query, key and value, and
  the output projection); MHSA four (query, key, value, output);
- attention scores and mixing: `4 T d` per token (`Q K^T` and `A V`, `2 T d` each); the causal
  half that the mask discards is counted in full, as nanoGPT and PaLM count it;
- sparse block: ISTA multiplies by its `d x (expansion d)` dictionary `2 * ista_steps` times (see
  `ista_matmuls`); the MLP has two `d x (expansion d)` matmuls; `none` has none.

Then the tied LM head, `2 d V`. Training costs 3x forward (the backward pass is two matmuls per
forward one: the gradients with respect to the input and to the weight).
"""

from __future__ import annotations

from crate_jax.model.config import ModelConfig

TRAINING_PER_FORWARD = 3

# Dense (no structured sparsity) peak FLOP/s per chip, from the vendors' data sheets, by the
# compute dtype the model runs in. A `device_kind` is matched against the patterns in order, so
# the more specific ones come first. float32 on NVIDIA GPUs is the TF32 tensor-core peak: XLA
# runs float32 dots as TF32 there at JAX's default matmul precision. TPUs have no float32 entry:
# their float32 matmuls are several bfloat16 passes, so no single peak stands for them.
PEAK_FLOPS_PER_SECOND: tuple[tuple[str, dict[str, float]], ...] = (
    ("h100 pcie", {"bfloat16": 756e12, "float32": 378e12}),
    ("h100", {"bfloat16": 989e12, "float32": 494.5e12}),  # SXM
    ("h200", {"bfloat16": 989e12, "float32": 494.5e12}),
    ("a100", {"bfloat16": 312e12, "float32": 156e12}),
    ("tpu v5 lite", {"bfloat16": 197e12}),  # v5e's device_kind
    ("tpu v5e", {"bfloat16": 197e12}),
    ("tpu v5p", {"bfloat16": 459e12}),
    ("tpu v5", {"bfloat16": 459e12}),  # v5p reports itself as "TPU v5"
    ("tpu v4", {"bfloat16": 275e12}),
)


def ista_matmuls(ista_steps: int) -> int:
    """How many times `ista.py` multiplies by the dictionary D (or D^T) per token.

    `ista_code` computes D^T x once; each of the `ista_steps - 1` later steps computes D z and
    then D^T (D z); `SparseCodingBlock` returns D z. So 1 + 2 (ista_steps - 1) + 1 = 2 ista_steps:
    four for the paper's two steps (D^T x, D z_1, D^T (D z_1), D z).
    """
    return 2 * ista_steps


def _matmul(rows: int, columns: int) -> int:
    return 2 * rows * columns


def model_flops_per_token(config: ModelConfig, seq_len: int) -> dict[str, int]:
    """Model FLOPs per token of one forward pass, by block (summed over layers), and in total.

    Keys: `attention_projections`, `attention_scores`, `sparse_block`, `lm_head`, `forward` (their
    sum) and `training` (3 x forward). `seq_len` is T, the length the model is run at.
    """
    width = config.embed_dim
    projections = {"mssa": 2, "mhsa": 4}[config.attention] * _matmul(width, width)
    scores = 4 * seq_len * width
    if config.sparse_block == "ista":
        sparse = ista_matmuls(config.ista_steps) * _matmul(width, config.ista_expansion * width)
    elif config.sparse_block == "mlp":
        sparse = 2 * _matmul(width, config.mlp_expansion * width)
    else:
        sparse = 0
    counts = {"attention_projections": config.num_layers * projections,
              "attention_scores": config.num_layers * scores,
              "sparse_block": config.num_layers * sparse,
              "lm_head": _matmul(width, config.vocab_size)}
    counts["forward"] = sum(counts.values())
    counts["training"] = TRAINING_PER_FORWARD * counts["forward"]
    return counts


def peak_flops_per_second(device_kind: str, dtype: str) -> float | None:
    """The dense peak of one `device_kind` (`jax.devices()[0].device_kind`) in `dtype`, or None
    for a CPU, an unknown device, or a dtype without a peak there."""
    kind = device_kind.lower()
    for pattern, peaks in PEAK_FLOPS_PER_SECOND:
        if pattern in kind:
            return peaks.get(dtype)
    return None


def model_flops_utilization(tokens_per_second: float, training_flops_per_token: float,
                            device_kind: str, device_count: int, dtype: str) -> float | None:
    """The fraction of the devices' dense peak that the model's own FLOPs use, or None where no
    peak is known (CPU, unknown devices)."""
    peak = peak_flops_per_second(device_kind, dtype)
    if peak is None:
        return None
    return tokens_per_second * training_flops_per_token / (peak * device_count)
