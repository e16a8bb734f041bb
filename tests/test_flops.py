"""Model FLOPs per token (issue 11's formula) against a hand count and against the model itself."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import crate, gpt2, ista_to_mlp, no_ista, standard_attention
from crate_jax.model import LanguageModel, ModelConfig, abstract_params
from crate_jax.model.flops import (
    model_flops_per_token,
    model_flops_utilization,
    peak_flops_per_second,
)

SEQ = 256
VARIANTS = {"crate": crate, "no_ista": no_ista, "standard_attention": standard_attention,
            "ista_to_mlp": ista_to_mlp, "gpt2": gpt2}


def one_layer(module, **model) -> ModelConfig:
    config = module.get_config("tiny")
    config.model.num_layers = 1
    config.model.update(model)
    return ModelConfig.from_mapping(config.model)


# `tiny` with one layer: d = 128, V = 8192, T = 256; ISTA's dictionary and the MLP are d x 4d.
# Per token, forward: an m x n matmul is 2 m n; attention scores + mixing 4 T d; head 2 d V.
HEAD = 2 * 128 * 8192
SCORES = 4 * 256 * 128
HAND_COUNTS = {
    # MSSA (U, out) + ISTA (D^T x, D z1, D^T D z1, D z)
    "crate": 2 * (2 * 128 * 128) + SCORES + 4 * (2 * 128 * 512) + HEAD,
    # MSSA only
    "no_ista": 2 * (2 * 128 * 128) + SCORES + HEAD,
    # MHSA (q, k, v, out) + ISTA
    "standard_attention": 4 * (2 * 128 * 128) + SCORES + 4 * (2 * 128 * 512) + HEAD,
    # MSSA + MLP (hidden, out)
    "ista_to_mlp": 2 * (2 * 128 * 128) + SCORES + 2 * (2 * 128 * 512) + HEAD,
    # MHSA + MLP
    "gpt2": 4 * (2 * 128 * 128) + SCORES + 2 * (2 * 128 * 512) + HEAD,
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_layer_matches_the_hand_count(variant):
    counts = model_flops_per_token(one_layer(VARIANTS[variant]), SEQ)
    assert counts["forward"] == HAND_COUNTS[variant]
    assert counts["training"] == 3 * HAND_COUNTS[variant]
    blocks = ("attention_projections", "attention_scores", "sparse_block", "lm_head")
    assert sum(counts[block] for block in blocks) == counts["forward"]


def _dot_flops(jaxpr) -> int:
    """FLOPs of every dot_general in a jaxpr and the jaxprs nested in it (jit, custom_jvp, ...)."""
    total = 0
    for equation in jaxpr.eqns:
        if equation.primitive.name == "dot_general":
            (lhs_contracting, _), _ = equation.params["dimension_numbers"]
            lhs_shape = equation.invars[0].aval.shape
            contracted = int(np.prod([lhs_shape[axis] for axis in lhs_contracting]))
            total += 2 * int(np.prod(equation.outvars[0].aval.shape)) * contracted
        for value in equation.params.values():
            for nested in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(nested, "jaxpr", nested)
                if hasattr(inner, "eqns"):
                    total += _dot_flops(inner)
    return total


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", [dict(), dict(num_layers=2, ista_steps=3, mlp_expansion=2,
                                                ista_expansion=3)])
def test_formula_counts_the_matmuls_the_model_runs(variant, model):
    """The formula equals the dot_general FLOPs of the model's own forward pass, traced with
    XLA's attention (unfused einsums over the full T x T, as the formula counts it; `blockwise`,
    `auto`'s choice on a CPU, skips the masked blocks), so a block added to the model, a changed
    number of ISTA steps or widths the formula ignores all make this fail."""
    config = one_layer(VARIANTS[variant], attention_impl="xla", **model)
    model_module = LanguageModel(config)
    params = abstract_params(config)
    tokens = jax.ShapeDtypeStruct((1, SEQ), np.int32)
    traced = jax.make_jaxpr(lambda p, t: model_module.apply({"params": p}, t))(params, tokens)
    assert _dot_flops(traced.jaxpr) == SEQ * model_flops_per_token(config, SEQ)["forward"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_formula_weights_are_the_models_matrices(variant):
    """Apart from attention scores, forward FLOPs are 2 x (each matrix parameter x the times it is
    used per token): once for every kernel and the tied embedding (the head), 2 ista_steps times
    for ISTA's dictionary (ista.py). Biases (2-D for per-head projections) are added, and position
    embeddings looked up, never multiplied."""
    config = one_layer(VARIANTS[variant], num_layers=3, ista_steps=2)
    uses = {"dictionary": 2 * config.ista_steps}
    weighted = 0
    for path, leaf in traverse_util.flatten_dict(abstract_params(config)).items():
        if path[-1] in ("kernel", "dictionary", "embedding") and "position_embedding" not in path:
            weighted += int(np.prod(leaf.shape)) * uses.get(path[-1], 1)
    counts = model_flops_per_token(config, SEQ)
    assert counts["forward"] - counts["attention_scores"] == 2 * weighted


def test_mfu_uses_the_device_peak_and_is_none_without_one():
    assert peak_flops_per_second("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert peak_flops_per_second("NVIDIA H200", "bfloat16") == 989e12
    assert peak_flops_per_second("NVIDIA A100-SXM4-80GB", "bfloat16") == 312e12
    assert peak_flops_per_second("TPU v4", "bfloat16") == 275e12
    assert peak_flops_per_second("TPU v5 lite", "bfloat16") == 197e12
    assert peak_flops_per_second("TPU v5p", "bfloat16") == 459e12
    assert peak_flops_per_second("cpu", "float32") is None
    # 100k tokens/s x 1e9 FLOPs/token on two H100s at 989 TFLOP/s each.
    assert model_flops_utilization(1e5, 1e9, "NVIDIA H100 80GB HBM3", 2, "bfloat16") == (
        pytest.approx(1e14 / (2 * 989e12)))
    assert model_flops_utilization(1e5, 1e9, "cpu", 1, "float32") is None
    assert model_flops_utilization(1e5, 1e9, "Some New Chip", 1, "bfloat16") is None
