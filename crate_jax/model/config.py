"""The model's settings as a validated, frozen dataclass.

Experiments are written as `ml_collections` configs (see `configs/`), which are open-ended
dictionaries. The model takes this frozen dataclass instead so that a misspelt key or an
impossible value fails at construction with a message naming it, not deep inside a jitted trace.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

ATTENTION_KINDS = ("mssa", "mhsa")
# Which kernel computes softmax attention (crate_jax/model/attention.py): `auto` picks cuDNN's
# fused flash attention where it can run, `blockwise` (XLA's ops over blocks of queries, faster
# on a CPU) on a CPU, and XLA's unfused ops elsewhere.
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "blockwise")
# How a train step computes the tied head and its loss (crate_jax/model/chunked_head.py):
# `logits` holds the whole [batch, seq, vocab] logits; `chunked` a block of positions at a time,
# with the gradient computed in the forward pass (faster on a CPU at a large vocabulary); `auto`
# is `chunked` on a CPU, `logits` elsewhere (`chunked_head.resolve_head_impl`).
HEAD_IMPLS = ("auto", "logits", "chunked")
# Keys that choose how the model is computed (a kernel), not which function it computes: a
# checkpoint, or an interpretability result, made under one value holds under another.
KERNEL_KEYS = ("attention_impl", "head_impl")
SPARSE_BLOCK_KINDS = ("ista", "mlp", "none")
# gelu is the exact (erf) form; gelu_tanh its tanh approximation, GPT-2's (`gelu_new` in
# transformers).
MLP_ACTIVATIONS = ("relu", "gelu", "gelu_tanh")
COMPUTE_DTYPES = ("float32", "bfloat16")


def model_identity(model_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The `config.model` settings that say which model this is (all but `KERNEL_KEYS`): what a
    resume and the interp stage's input fingerprint compare."""
    return {key: value for key, value in model_settings.items() if key not in KERNEL_KEYS}


class ConfigError(ValueError):
    """A config key or value the model cannot use; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines one member of the CRATE model family.

    The ablation switches are `attention` (MSSA or standard multi-head self-attention) and
    `sparse_block` (ISTA, an MLP, or nothing). Paper sizes use vocab 50304 and context 1024.
    """

    vocab_size: int = 8192
    max_len: int = 256
    num_layers: int = 2
    embed_dim: int = 128
    num_heads: int = 4
    attention: str = "mssa"
    # How attention is computed, not what: every choice is the same function (within bfloat16
    # rounding), so it is a speed setting.
    attention_impl: str = "auto"
    # How training computes the tied head's loss: the same function either way, a speed setting.
    head_impl: str = "auto"
    sparse_block: str = "ista"
    # Biases of LayerNorm and of every Dense except MSSA's shared projection U (which never has
    # one). CRATE keeps them; the paper's GPT-2 baseline is bias-free.
    use_bias: bool = True
    ista_expansion: int = 4
    ista_steps: int = 2
    ista_step_size: float = 0.1
    ista_threshold: float = 0.1
    # False is the CRATE form (the ISTA output replaces the stream); True is CRATE-alpha's.
    ista_residual: bool = False
    mlp_expansion: int = 4
    mlp_activation: str = "relu"
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _require_choice("attention", self.attention, ATTENTION_KINDS)
        _require_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _require_choice("head_impl", self.head_impl, HEAD_IMPLS)
        _require_choice("sparse_block", self.sparse_block, SPARSE_BLOCK_KINDS)
        _require_choice("mlp_activation", self.mlp_activation, MLP_ACTIVATIONS)
        _require_choice("dtype", self.dtype, COMPUTE_DTYPES)
        for name in ("vocab_size", "max_len", "num_layers", "embed_dim", "num_heads",
                     "ista_expansion", "ista_steps", "mlp_expansion"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"model.embed_dim={self.embed_dim} is not divisible by model.num_heads="
                f"{self.num_heads}; every head needs the same width")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(f"model.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        for name in ("ista_step_size", "ista_threshold", "layer_norm_epsilon"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be non-negative, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        """Activations' dtype; parameters always stay float32."""
        return jnp.dtype(self.dtype)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Builds the config from `config.model` (a ConfigDict or a plain dict).

        Unknown keys are errors with a suggestion, so `atention='mhsa'` cannot silently train the
        default MSSA model.
        """
        if hasattr(values, "to_dict"):
            values = values.to_dict()
        known = [field.name for field in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean 'model.{close[0]}'?)" if close else ""
                raise ConfigError(f"unknown config key 'model.{key}'{hint}; known keys: "
                                  + ", ".join(known))
        return cls(**dict(values))


def _require_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"model.{name}={value!r} is not one of {', '.join(choices)}{hint}")
