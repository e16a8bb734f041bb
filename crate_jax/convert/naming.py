"""Where each parameter of our model lives in a PyTorch state dict, and in which layout.

Two namings hold our models outside crate_jax:
- `crate-lm`, the paper's code (`crate_overcomplete.py` for CRATE, `gpt.py` for its GPT
  baseline; nanoGPT's names): `nn.Linear` weights stored `[out, in]`, MSSA's shared projection
  U as a `[d, d]` `attn.c_attn`, the ISTA dictionary D as `ista.weight` `[4d, d]` (= D^T), the
  norms named `prenorm_1/2` in a block with ISTA and `ln_1/2` in one with an MLP;
- `hf`, Hugging Face's `GPT2LMHeadModel`: `Conv1D` weights stored `[in, out]`, query, key and
  value fused in one `attn.c_attn` (`[d, 3d]`), biases everywhere.

Every tensor is one `TensorRule`: its name there, its path(s) in our Flax tree and the two
layout maps, so import and export read the same table in opposite directions and cannot drift
apart. `rules(settings, naming)` lists them for one model; the formats (`formats.py`) decide
which model a file holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from crate_jax.model import ModelConfig

NAMINGS = ("crate-lm", "hf")
# The head tied to the token embedding: both namings store it (crate-lm always; a Hugging Face
# file may leave it out), and our model has no separate array for it.
TIED_HEAD = "lm_head.weight"
TOKEN_EMBEDDING = "transformer.wte.weight"

ParamPath = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """One tensor of their state dict: `name`, its `shape` there, the parameter(s) it holds in
    ours (`paths`; several for a fused query/key/value) and the maps between the two."""

    name: str
    shape: tuple[int, ...]
    paths: tuple[ParamPath, ...]
    to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_theirs: Callable[..., np.ndarray]


def rules(settings: ModelConfig, naming: str) -> list[TensorRule]:
    """The tensors of `settings`' model in `naming`, every parameter of our tree exactly once
    (the tied head is not among them: `TIED_HEAD`)."""
    if naming not in NAMINGS:
        raise ValueError(f"unknown naming {naming!r}; known: {', '.join(NAMINGS)}")
    d = settings.embed_dim
    bias = settings.use_bias
    table = [
        _identity(TOKEN_EMBEDDING, ("token_embedding", "embedding"), (settings.vocab_size, d)),
        _identity("transformer.wpe.weight", ("position_embedding", "embedding"),
                  (settings.max_len, d)),
        *_norm("transformer.ln_f", ("final_norm",), d, bias),
    ]
    for index in range(settings.num_layers):
        table.extend(_layer_rules(settings, naming, index))
    return table


def _layer_rules(settings: ModelConfig, naming: str, index: int) -> Iterator[TensorRule]:
    d, heads, head_dim = settings.embed_dim, settings.num_heads, settings.head_dim
    bias, stored_in_out = settings.use_bias, naming == "hf"
    prefix, ours = f"transformer.h.{index}.", (f"layer_{index}",)
    paper_crate_block = naming == "crate-lm" and settings.sparse_block == "ista"
    first_norm, second_norm = ("prenorm_1", "prenorm_2") if paper_crate_block else ("ln_1", "ln_2")

    yield from _norm(prefix + first_norm, ours + ("attention_norm",), d, bias)
    attention = ours + ("attention",)
    if settings.attention == "mssa":
        # One projection U serves as query, key and value; it never has a bias.
        yield _dense(prefix + "attn.c_attn.weight", attention + ("subspace", "kernel"),
                     (d, heads, head_dim), 1, stored_in_out)
    else:
        yield _fused_qkv(prefix + "attn.c_attn.weight", attention, (d, heads, head_dim),
                         stored_in_out)
        if bias:
            yield _fused_qkv(prefix + "attn.c_attn.bias", attention, (heads, head_dim),
                             stored_in_out, is_bias=True)
    yield _dense(prefix + "attn.c_proj.weight", attention + ("out", "kernel"),
                 (heads, head_dim, d), 2, stored_in_out)
    if bias:
        yield _identity(prefix + "attn.c_proj.bias", attention + ("out", "bias"), (d,))

    if settings.sparse_block == "ista":
        yield from _norm(prefix + second_norm, ours + ("ista_norm",), d, bias)
        # D is [d, p] here; the paper keeps D^T, a Linear weight [p, d] (crate-lm only).
        yield _dense(prefix + "ista.weight", ours + ("ista", "dictionary"),
                     (d, settings.ista_expansion * d), 1, stored_in_out)
    elif settings.sparse_block == "mlp":
        hidden = settings.mlp_expansion * d
        mlp = ours + ("mlp",)
        yield from _norm(prefix + second_norm, ours + ("mlp_norm",), d, bias)
        yield _dense(prefix + "mlp.c_fc.weight", mlp + ("hidden", "kernel"), (d, hidden), 1,
                     stored_in_out)
        if bias:
            yield _identity(prefix + "mlp.c_fc.bias", mlp + ("hidden", "bias"), (hidden,))
        yield _dense(prefix + "mlp.c_proj.weight", mlp + ("out", "kernel"), (hidden, d), 1,
                     stored_in_out)
        if bias:
            yield _identity(prefix + "mlp.c_proj.bias", mlp + ("out", "bias"), (d,))


def _identity(name: str, path: ParamPath, shape: tuple[int, ...]) -> TensorRule:
    return TensorRule(name, shape, (path,), lambda array: (array,), lambda array: array)


def _norm(name: str, path: ParamPath, width: int, bias: bool) -> list[TensorRule]:
    """A LayerNorm: PyTorch's `weight` is our `scale`."""
    norm = [_identity(f"{name}.weight", path + ("scale",), (width,))]
    if bias:
        norm.append(_identity(f"{name}.bias", path + ("bias",), (width,)))
    return norm


def _dense(name: str, path: ParamPath, kernel_shape: tuple[int, ...], in_axes: int,
           stored_in_out: bool) -> TensorRule:
    """A matrix multiply whose kernel is ours in `kernel_shape` (its first `in_axes` axes are
    the input) and theirs a matrix, `[in, out]` (`Conv1D`) or `[out, in]` (`nn.Linear`)."""
    fan_in = math.prod(kernel_shape[:in_axes])
    fan_out = math.prod(kernel_shape[in_axes:])
    shape = (fan_in, fan_out) if stored_in_out else (fan_out, fan_in)

    def to_ours(array: np.ndarray) -> tuple[np.ndarray, ...]:
        matrix = array if stored_in_out else array.T
        return (np.ascontiguousarray(matrix.reshape(kernel_shape)),)

    def to_theirs(kernel: np.ndarray) -> np.ndarray:
        matrix = kernel.reshape(fan_in, fan_out)
        return np.ascontiguousarray(matrix if stored_in_out else matrix.T)

    return TensorRule(name, shape, (path,), to_ours, to_theirs)


def _fused_qkv(name: str, attention: ParamPath, shape: tuple[int, ...], stored_in_out: bool,
               is_bias: bool = False) -> TensorRule:
    """Query, key and value side by side on the output axis (`[..., 3d]`), each `shape` in ours
    (`[d, heads, head_dim]` kernels, `[heads, head_dim]` biases)."""
    leaf = "bias" if is_bias else "kernel"
    paths = tuple(attention + (part, leaf) for part in ("query", "key", "value"))
    width = math.prod(shape[-2:])  # d
    rows = shape[:-2]  # () for a bias, (d,) for a kernel
    fused_shape = (*rows, 3 * width)
    theirs = fused_shape if stored_in_out or is_bias else fused_shape[::-1]

    def to_ours(array: np.ndarray) -> tuple[np.ndarray, ...]:
        fused = array if stored_in_out or is_bias else array.T
        return tuple(np.ascontiguousarray(part.reshape(shape))
                     for part in np.split(fused, 3, axis=-1))

    def to_theirs(*parts: np.ndarray) -> np.ndarray:
        fused = np.concatenate([part.reshape(*rows, width) for part in parts], axis=-1)
        return np.ascontiguousarray(fused if stored_in_out or is_bias else fused.T)

    return TensorRule(name, theirs, paths, to_ours, to_theirs)


def get_path(tree: dict, path: ParamPath) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: ParamPath, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
