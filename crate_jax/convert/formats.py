"""The file formats a crate_jax model converts from and to, and which model a file holds.

- `crate-lm`: the dict the paper's `train.py` saves with `torch.save` (`model`: the state dict,
  perhaps with torch.compile's `_orig_mod.` prefix; `model_args`: n_layer, n_head, n_embd,
  block_size, bias, vocab_size; `iter_num`). Both of the paper's models: CRATE
  (`crate_overcomplete.py`) and its GPT baseline (`gpt.py`), told apart by their tensors. Our
  other variants export to it too, with their settings under `model_args['crate_jax_model']`;
  the paper's code loads only the two it has.
- `hf-gpt2`: a Hugging Face `GPT2LMHeadModel` folder (`config.json` and `model.safetensors` or
  `pytorch_model.bin`). It holds GPT-2's architecture only (standard attention and an MLP).

Nothing is approximated: a setting the target cannot express, a tensor that is missing, unknown
or of the wrong shape, is a `ConversionError` naming it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from crate_jax.atomic_files import write_json_atomically
from crate_jax.convert.naming import (
    TIED_HEAD,
    TOKEN_EMBEDDING,
    ParamPath,
    TensorRule,
    get_path,
    rules,
    set_path,
)
from crate_jax.convert.tensor_files import (
    ConversionError,
    as_array,
    as_tensors,
    read_safetensors,
    read_torch_pickle,
    write_safetensors,
    write_torch_pickle,
)
from crate_jax.model import ConfigError, ModelConfig

FORMATS = ("crate-lm", "hf-gpt2")
# Our settings, written beside the weights, so that a model the target's own code has no
# switch for still comes back as itself.
SETTINGS_KEY = "crate_jax_model"
_COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper, kept in some of the paper's files

# The paper's code, `crate_overcomplete.py` and `gpt.py`: what it fixes, whatever model_args say.
PAPER_CRATE = dict(attention="mssa", sparse_block="ista", use_bias=True, ista_expansion=4,
                   ista_steps=2, ista_step_size=0.1, ista_threshold=0.1, ista_residual=False,
                   layer_norm_epsilon=1e-5)
PAPER_GPT = dict(attention="mhsa", sparse_block="mlp", mlp_expansion=4, mlp_activation="relu",
                 layer_norm_epsilon=1e-5)

# transformers' `activation_function` names <-> ours.
HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh"}
_HF_ACTIVATION_OF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new"}
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclasses.dataclass(frozen=True)
class ImportedModel:
    """What a file holds: the model's settings, its parameters (our tree, NumPy float32), the
    training step it was saved at, what it is in words, the files it was read from, and their
    folder (where a Hugging Face tokenizer may lie)."""

    settings: ModelConfig
    params: dict
    step: int
    description: str
    files: tuple[Path, ...]

    @property
    def folder(self) -> Path:
        return self.files[0].parent


def read_model(format_name: str, path: Path) -> ImportedModel:
    """The model in `path`, a file (or, for `hf-gpt2`, a folder) of format `format_name`."""
    check_format(format_name)
    if not path.exists():
        raise ConversionError(f"--checkpoint={path} does not exist")
    if format_name == "crate-lm":
        return _read_crate_lm(path)
    return _read_hf_gpt2(path)


def source_files(format_name: str, path: Path) -> tuple[Path, ...]:
    """The files `read_model` reads for `path`: what a conversion's sha256 is taken over."""
    check_format(format_name)
    if format_name == "crate-lm":
        return (path,)
    weights = _hf_weights_file(path)
    config = weights.parent / "config.json"
    if not config.is_file():
        raise ConversionError(f"{config} is missing: a Hugging Face model needs its config.json "
                              "beside the weights")
    return (weights, config)


def write_model(format_name: str, settings: ModelConfig, params: dict, step: int,
                path: Path) -> list[Path]:
    """Writes the model in `format_name` at `path` (a file for `crate-lm`, a folder for
    `hf-gpt2`); returns the files written. Refused before any file is written when the format
    cannot hold the model."""
    check_format(format_name)
    if format_name == "crate-lm":
        return _write_crate_lm(settings, params, step, path)
    return _write_hf_gpt2(settings, params, path)


def check_format(format_name: str) -> None:
    if format_name not in FORMATS:
        raise ConversionError(f"unknown format {format_name!r}; known: {', '.join(FORMATS)}")


# --- crate-lm: the paper's checkpoint dict ------------------------------------------------------

def _read_crate_lm(path: Path) -> ImportedModel:
    checkpoint = read_torch_pickle(path)
    if "model" not in checkpoint or "model_args" not in checkpoint:
        found = ", ".join(map(str, list(checkpoint)[:8]))
        raise ConversionError(
            f"{path} is not a crate-lm checkpoint: it needs the keys 'model' (the state dict) and "
            f"'model_args' (what train.py saves); it has {found or 'nothing'}")
    model_args = checkpoint["model_args"]
    tensors = {name.removeprefix(_COMPILED_PREFIX): tensor
               for name, tensor in checkpoint["model"].items()}
    if SETTINGS_KEY in model_args:
        settings = _settings(model_args[SETTINGS_KEY], f"{path}: model_args[{SETTINGS_KEY!r}]")
        description = f"a crate_jax {_architecture(settings)} model"
    else:
        settings, description = _paper_settings(model_args, tensors, path)
    params = params_from_state_dict(tensors, settings, "crate-lm", path)
    step = int(checkpoint.get("iter_num", 0))
    return ImportedModel(settings, params, step, description, (path,))


def _paper_settings(model_args: dict, tensors: dict, path: Path) -> tuple[ModelConfig, str]:
    """Which of the paper's two models the tensors are: CRATE has an ISTA dictionary and a
    `[d, d]` shared projection, the GPT an MLP and a `[3d, d]` query/key/value projection."""
    missing = [key for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
               if key not in model_args]
    if missing:
        raise ConversionError(f"{path}: model_args lacks {', '.join(missing)}")
    width = int(model_args["n_embd"])
    shape = {name: tuple(getattr(tensor, "shape", ())) for name, tensor in tensors.items()}
    common = dict(vocab_size=int(model_args["vocab_size"]), max_len=int(model_args["block_size"]),
                  num_layers=int(model_args["n_layer"]), embed_dim=width,
                  num_heads=int(model_args["n_head"]), dropout_rate=0.0)
    first = "transformer.h.0."
    if first + "ista.weight" in shape:
        dictionary = shape[first + "ista.weight"]
        if len(dictionary) != 2 or dictionary[1] != width or dictionary[0] % width:
            raise ConversionError(f"{path}: tensor {first}ista.weight has shape {dictionary}; "
                                  f"the paper's ISTA dictionary is [4 * n_embd, n_embd] = "
                                  f"[{4 * width}, {width}]")
        values = {**common, **PAPER_CRATE, "ista_expansion": dictionary[0] // width}
        description = "the paper's CRATE (crate-lm crate_overcomplete.py)"
    elif first + "mlp.c_fc.weight" in shape:
        # gpt.py's biases follow model_args['bias']; the tensors say which it was.
        values = {**common, **PAPER_GPT, "use_bias": "transformer.ln_f.bias" in shape}
        description = "the paper's GPT baseline (crate-lm gpt.py)"
    else:
        raise ConversionError(
            f"{path}: the state dict has neither {first}ista.weight (the paper's CRATE) nor "
            f"{first}mlp.c_fc.weight (its GPT baseline); not a model of the paper's code")
    return _settings(values, f"{path}: model_args"), description


def _write_crate_lm(settings: ModelConfig, params: dict, step: int, path: Path) -> list[Path]:
    state_dict = state_dict_from_params(params, settings, "crate-lm")
    state_dict[TIED_HEAD] = state_dict[TOKEN_EMBEDDING]  # the paper's state dict holds both
    model_args = {"n_layer": settings.num_layers, "n_head": settings.num_heads,
                  "n_embd": settings.embed_dim, "block_size": settings.max_len,
                  "bias": settings.use_bias, "vocab_size": settings.vocab_size, "dropout": 0.0}
    if paper_model(settings) is None:
        model_args[SETTINGS_KEY] = dataclasses.asdict(settings)
    write_torch_pickle(path, {"model": as_tensors(state_dict), "model_args": model_args,
                              "iter_num": int(step)})
    return [path]


def paper_model(settings: ModelConfig) -> str | None:
    """`crate` or `gpt` when the paper's own code computes exactly this model, else None."""
    for name, fixed in (("crate", PAPER_CRATE), ("gpt", PAPER_GPT)):
        if all(getattr(settings, key) == value for key, value in fixed.items()):
            return name
    return None


# --- hf-gpt2: a transformers GPT2LMHeadModel folder ---------------------------------------------

def _read_hf_gpt2(path: Path) -> ImportedModel:
    weights, config_path = source_files("hf-gpt2", path)
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConversionError(f"cannot read {config_path} as JSON ({error})") from None
    if SETTINGS_KEY in hf_config:
        settings = _settings(hf_config[SETTINGS_KEY], f"{config_path}: {SETTINGS_KEY}")
        description = f"a crate_jax {_architecture(settings)} model in Hugging Face's GPT-2 format"
    else:
        settings = _hf_settings(hf_config, config_path)
        description = "a Hugging Face GPT-2 (GPT2LMHeadModel)"
    _check_hf_architecture(settings)
    if weights.suffix == ".safetensors":
        tensors = read_safetensors(weights)
    else:
        tensors = read_torch_pickle(weights)
    tensors = _with_model_prefix(tensors)
    # The causal-mask buffers older transformers versions saved with the weights.
    buffers = {name for name in tensors
               if name.startswith("transformer.h.") and name.endswith((".attn.bias",
                                                                        ".attn.masked_bias"))}
    with_biases = dataclasses.replace(settings, use_bias=True)  # GPT-2's file always has them
    params = params_from_state_dict(tensors, with_biases, "hf", weights, ignored=buffers)
    if not settings.use_bias:
        params = _without_zero_biases(params, settings, weights)
    return ImportedModel(settings, params, 0, description, (weights, config_path))


def _hf_weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in HF_WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise ConversionError(f"{path} holds none of {', '.join(HF_WEIGHT_FILES)} (a sharded "
                          "checkpoint is not supported: save it with max_shard_size large "
                          "enough for one file)")


def _hf_settings(hf_config: dict, where: Path) -> ModelConfig:
    """Our settings for transformers' GPT2Config; what GPT-2's file can switch but our model
    cannot is refused by name."""
    if hf_config.get("model_type") != "gpt2":
        raise ConversionError(f"{where}: model_type is {hf_config.get('model_type')!r}; "
                              "--from=hf-gpt2 reads GPT-2 models (model_type 'gpt2')")
    computed = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "add_cross_attention": False, "tie_word_embeddings": True}
    for key, ours in computed.items():
        if hf_config.get(key, ours) != ours:
            raise ConversionError(f"{where}: {key}={hf_config[key]!r} has no counterpart in "
                                  f"crate_jax's model (it computes {key}={ours})")
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in HF_ACTIVATIONS:
        raise ConversionError(f"{where}: activation_function={activation!r} is not one of "
                              f"{', '.join(HF_ACTIVATIONS)}")
    width = int(hf_config["n_embd"])
    inner = hf_config.get("n_inner") or 4 * width
    if inner % width:
        raise ConversionError(f"{where}: n_inner={inner} is not a multiple of n_embd={width}")
    values = dict(vocab_size=hf_config["vocab_size"], max_len=hf_config["n_positions"],
                  num_layers=hf_config["n_layer"], embed_dim=width, num_heads=hf_config["n_head"],
                  attention="mhsa", sparse_block="mlp", use_bias=True,
                  mlp_expansion=inner // width, mlp_activation=HF_ACTIVATIONS[activation],
                  layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-5)),
                  dropout_rate=0.0)
    return _settings(values, where)


def _check_hf_architecture(settings: ModelConfig) -> None:
    if (settings.attention, settings.sparse_block) != ("mhsa", "mlp"):
        raise ConversionError(
            f"Hugging Face's GPT-2 format holds standard attention and an MLP; this model has "
            f"attention={settings.attention!r}, sparse_block={settings.sparse_block!r}: use "
            "--to=crate-lm, which holds every crate_jax variant")


def _write_hf_gpt2(settings: ModelConfig, params: dict, folder: Path) -> list[Path]:
    _check_hf_architecture(settings)
    with_biases = dataclasses.replace(settings, use_bias=True)
    state_dict = state_dict_from_params(params, with_biases, "hf", zero_missing=True)
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": settings.vocab_size, "n_positions": settings.max_len,
        "n_embd": settings.embed_dim, "n_layer": settings.num_layers,
        "n_head": settings.num_heads, "n_inner": settings.mlp_expansion * settings.embed_dim,
        "activation_function": _HF_ACTIVATION_OF[settings.mlp_activation],
        "layer_norm_epsilon": settings.layer_norm_epsilon, "resid_pdrop": 0.0,
        "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True,
        "scale_attn_weights": True, "torch_dtype": "float32",
        SETTINGS_KEY: dataclasses.asdict(settings)}
    folder.mkdir(parents=True, exist_ok=True)
    weights, config_path = folder / HF_WEIGHT_FILES[0], folder / "config.json"
    write_safetensors(weights, state_dict)
    write_json_atomically(config_path, hf_config)
    return [weights, config_path]


def _with_model_prefix(tensors: dict) -> dict:
    """A bare `GPT2Model`'s names (`h.0...`, `wte.weight`, as on the Hub) with the
    `transformer.` prefix `GPT2LMHeadModel` gives them."""
    if any(name.startswith("transformer.") for name in tensors):
        return tensors
    return {name if name == TIED_HEAD else f"transformer.{name}": tensor
            for name, tensor in tensors.items()}


def _without_zero_biases(params: dict, settings: ModelConfig, where: Path) -> dict:
    """`params` of a bias-free model that went through GPT-2's format, which stored its
    biases as zeros: those are dropped, any other value refused (the model would change)."""
    kept = {tuple(rule.paths) for rule in rules(settings, "hf")}
    trimmed: dict = {}
    for rule in rules(dataclasses.replace(settings, use_bias=True), "hf"):
        for path in rule.paths:
            value = get_path(params, path)
            if tuple(rule.paths) in kept:
                set_path(trimmed, path, value)
            elif np.any(value != 0):
                raise ConversionError(f"{where}: tensor {rule.name} is not zero, but the model "
                                      f"({SETTINGS_KEY}) has use_bias=False")
    return trimmed


# --- state dict <-> our parameter tree ----------------------------------------------------------

def params_from_state_dict(tensors: dict[str, Any], settings: ModelConfig, naming: str,
                           source: Path, ignored: Iterable[str] = ()) -> dict:
    """Our parameter tree from `tensors` (a state dict named by `naming`); every tensor must be
    the model's, every parameter of the model present, each of its shape."""
    table = rules(settings, naming)
    expected = {rule.name for rule in table}
    unknown = sorted(set(tensors) - expected - {TIED_HEAD} - set(ignored))
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ConversionError(f"{source}: unknown tensor {unknown[0]}{more}: not a parameter of "
                              f"the {_architecture(settings)} model its settings describe")
    params: dict = {}
    for rule in table:
        if rule.name not in tensors:
            raise ConversionError(f"{source}: tensor {rule.name} is missing (the "
                                  f"{_architecture(settings)} model needs it, shape "
                                  f"{list(rule.shape)})")
        array = as_array(rule.name, tensors[rule.name])
        if array.shape != rule.shape:
            raise ConversionError(f"{source}: tensor {rule.name} has shape {list(array.shape)}, "
                                  f"the model's settings need {list(rule.shape)}")
        for path, value in zip(rule.paths, rule.to_ours(array), strict=True):
            set_path(params, path, value)
    if TIED_HEAD in tensors:
        head = as_array(TIED_HEAD, tensors[TIED_HEAD])
        embedding = get_path(params, ("token_embedding", "embedding"))
        if head.shape != embedding.shape or not np.array_equal(head, embedding):
            raise ConversionError(f"{source}: tensor {TIED_HEAD} differs from {TOKEN_EMBEDDING}; "
                                  "crate_jax's output head is tied to the token embedding")
    return params


def state_dict_from_params(params: dict, settings: ModelConfig, naming: str,
                           zero_missing: bool = False) -> dict[str, np.ndarray]:
    """`params` as a state dict named by `naming` (float32 arrays). `zero_missing`: a parameter
    the tree lacks (a bias-free model's biases, where the format always has them) is zero."""
    state_dict = {}
    for rule in rules(settings, naming):
        parts = [_leaf(params, path, rule, zero_missing) for path in rule.paths]
        state_dict[rule.name] = np.asarray(rule.to_theirs(*parts), np.float32)
    return state_dict


def _leaf(params: dict, path: ParamPath, rule: TensorRule, zero_missing: bool) -> np.ndarray:
    try:
        return np.asarray(get_path(params, path), np.float32)
    except KeyError:
        if not zero_missing:
            raise
    width = rule.shape[-1] // len(rule.paths)
    return np.zeros(rule.shape[:-1] + (width,), np.float32)


def _settings(values: Any, where: str) -> ModelConfig:
    if not isinstance(values, dict):
        raise ConversionError(f"{where} is a {type(values).__name__}, not a dict of settings")
    try:
        return ModelConfig.from_mapping(values)
    except (ConfigError, TypeError, ValueError) as error:
        raise ConversionError(f"{where}: {error}") from None


def _architecture(settings: ModelConfig) -> str:
    return f"{settings.attention}+{settings.sparse_block}"
