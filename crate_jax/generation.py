"""Text generation from a trained run, optionally with chosen neurons steered.

`load_trained(workdir)` gives the model, its last checkpoint's parameters and its tokenizer;
`generate` continues a prompt by sampling (temperature 0 is greedy; `top_k`, `top_p` filter)
with a key-value cache: the prompt in one call, then one jitted call per new token. Without the
cache each token reruns the whole (padded) sequence; both give the same tokens, which is what
the cache is tested against. Steering (`NeuronSteer`) is data, the model's `steering`
collection, so steered and unsteered generation run the same jitted code.

Step `i`'s sampling key is `fold_in(key(seed), i)`, so a seed fixes the continuation whatever
the cache or the steering, and a steered run differs from the unsteered one only by the steer.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from crate_jax.data.tokenizer import TextTokenizer, load_saved_tokenizer
from crate_jax.input_checks import WorkdirError
from crate_jax.interp.explanations.neuron_scoring import read_neuron_lines
from crate_jax.layout import RunLayout
from crate_jax.model import (
    ConfigError,
    LanguageModel,
    NeuronSteer,
    abstract_params,
    model_from_config,
    steering_variables,
)
from crate_jax.model.attention import CACHE
from crate_jax.train.checkpoints import Checkpointer, CheckpointError

__all__ = ["NeuronSteer", "Trained", "generate", "generate_tokens", "load_trained",
           "neuron_explanation", "sample_token", "steer_report", "steered_logits"]


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained run, ready to generate: `config` is the run's saved config (a ConfigDict)."""

    model: LanguageModel
    params: Any
    tokenizer: TextTokenizer
    config: ml_collections.ConfigDict


def load_trained(workdir: str | Path) -> Trained:
    """The model of `workdir`'s saved config, with its last checkpoint's parameters and the
    tokenizer its data was made with."""
    layout = RunLayout(workdir)
    train_first = ("train one first: python -m crate_jax.main --config=configs/crate.py "
                   f"--workdir={layout.workdir}")
    if not layout.config.is_file():
        raise WorkdirError(f"{layout.workdir} holds no trained run ({layout.config} is "
                           f"missing); {train_first}")
    config = ml_collections.ConfigDict(json.loads(layout.config.read_text()))
    model = model_from_config(config)
    if not layout.checkpoints.is_dir():
        raise CheckpointError(f"{layout.workdir} has no checkpoint ({layout.checkpoints} is "
                              f"missing); {train_first}")
    with Checkpointer(layout.checkpoints, save_every=config.train.checkpoint_every,
                      keep=None) as checkpointer:
        if checkpointer.latest_step() is None:
            raise CheckpointError(f"no finished checkpoint in {layout.checkpoints}; {train_first}")
        params = checkpointer.restore_params(None, abstract_params(model.config))
    tokenizer = load_saved_tokenizer(config.data.tokenizer, layout.data_dir,
                                     model.config.vocab_size)
    return Trained(model=model, params=params, tokenizer=tokenizer, config=config)


def _variables(model: LanguageModel, params: Any, steering: Sequence[NeuronSteer]) -> dict:
    """`params` plus the `steering` collection; no collection at all without steering."""
    return {"params": params, **steering_variables(model.config, steering)}


@functools.partial(jax.jit, static_argnums=0)
def _logits(model: LanguageModel, variables: dict, tokens: jax.Array) -> jax.Array:
    return model.apply(variables, tokens)


def steered_logits(model: LanguageModel, params: Any, tokens: jax.Array,
                   steering: Sequence[NeuronSteer] = ()) -> jax.Array:
    """Logits `[batch, seq, vocab]` of `tokens` (`[batch, seq]`) with `steering` applied (none:
    the plain forward pass)."""
    return _logits(model, _variables(model, params, steering), jnp.asarray(tokens, jnp.int32))


def sample_token(logits: jax.Array, key: jax.Array, temperature: float, top_k: int,
                 top_p: float) -> jax.Array:
    """Next tokens `[batch]` from logits `[batch, vocab]`: greedy at temperature 0, else a draw
    from the softmax at `temperature` over the `top_k` most likely tokens (0: all) and the
    smallest set of them holding probability `top_p` (1.0: all)."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probabilities = jax.nn.softmax(ordered, axis=-1)
        # Keep a token while the more likely ones hold less than top_p (the first always).
        kept = jnp.cumsum(probabilities, axis=-1) - probabilities < top_p
        lowest_kept = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < lowest_kept, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _sample(logits: jax.Array, key: jax.Array, step: jax.Array, temperature: float, top_k: int,
            top_p: float) -> jax.Array:
    """`sample_token` with step `step`'s key: the same draw with or without the cache."""
    return sample_token(logits, jax.random.fold_in(key, step), temperature, top_k, top_p)


@functools.partial(jax.jit, static_argnums=0)
def _prefill(model: LanguageModel, variables: dict, tokens: jax.Array) -> tuple[jax.Array, Any]:
    """The prompt `[batch, seq]` in one call: last logits `[batch, vocab]` and the new cache."""
    logits, state = model.apply(variables, tokens, decode=True, mutable=[CACHE])
    return logits[:, -1], state[CACHE]


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _decode_step(model: LanguageModel, variables: dict, cache: Any,
                 token: jax.Array) -> tuple[jax.Array, Any]:
    """One token `[batch]` more through the cache: its logits `[batch, vocab]`, the cache."""
    logits, state = model.apply({**variables, CACHE: cache}, token[:, None], decode=True,
                                mutable=[CACHE])
    return logits[:, -1], state[CACHE]


@functools.partial(jax.jit, static_argnums=0)
def _logits_at(model: LanguageModel, variables: dict, tokens: jax.Array,
               length: jax.Array) -> jax.Array:
    """Without a cache: the logits after the first `length` of `tokens` (`[batch, padded]`);
    the padding after them is never attended to (causal), and one padded shape compiles once."""
    logits = model.apply(variables, tokens)
    return jax.lax.dynamic_index_in_dim(logits, length - 1, axis=1, keepdims=False)


def _check_settings(model: LanguageModel, prompt_length: int, max_new_tokens: int,
                    temperature: float, top_k: int, top_p: float) -> None:
    max_len = model.config.max_len
    if prompt_length < 1:
        raise ConfigError("the prompt has no tokens; give some text")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if prompt_length + max_new_tokens > max_len:
        raise ConfigError(f"the prompt ({prompt_length} tokens) plus max_new_tokens="
                          f"{max_new_tokens} exceed model.max_len={max_len}; shorten the prompt "
                          f"or ask for at most {max(max_len - prompt_length, 0)} new tokens")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0: off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1] (1.0: off), got {top_p}")


def generate_tokens(model: LanguageModel, params: Any, prompt: Sequence[int],
                    max_new_tokens: int = 40, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, seed: int = 0, steering: Sequence[NeuronSteer] = (),
                    use_cache: bool = True, end_of_text: int | None = None) -> list[int]:
    """The new tokens after `prompt` (token ids), at most `max_new_tokens`, ending before
    `end_of_text` if it is drawn."""
    prompt = [int(token) for token in prompt]
    _check_settings(model, len(prompt), max_new_tokens, temperature, top_k, top_p)
    variables = _variables(model, params, steering)
    key = jax.random.key(seed)
    settings = (float(temperature), int(top_k), float(top_p))
    new: list[int] = []
    if use_cache and max_new_tokens:
        logits, cache = _prefill(model, variables, jnp.asarray([prompt], jnp.int32))
    else:
        padded = np.zeros((1, len(prompt) + max_new_tokens), np.int32)
        padded[0, :len(prompt)] = prompt
    for step in range(max_new_tokens):
        if not use_cache:
            logits = _logits_at(model, variables, jnp.asarray(padded), len(prompt) + step)
        token = _sample(logits, key, step, *settings)
        value = int(token[0])
        if value == end_of_text:
            break
        new.append(value)
        if use_cache and step + 1 < max_new_tokens:
            logits, cache = _decode_step(model, variables, cache, token)
        elif not use_cache:
            padded[0, len(prompt) + step] = value
    return new


def generate(trained: Trained, prompt: str, max_new_tokens: int = 40, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             steering: Sequence[NeuronSteer] = (), use_cache: bool = True) -> str:
    """The continuation of `prompt` (its text only) from the trained model."""
    tokenizer = trained.tokenizer
    tokens = generate_tokens(trained.model, trained.params, tokenizer.encode(prompt),
                             max_new_tokens, temperature, top_k, top_p, seed, steering,
                             use_cache, tokenizer.end_of_text)
    return tokenizer.decode(tokens)


def neuron_explanation(workdir: str, steer: NeuronSteer) -> str | None:
    """`explanation (score s)` of the neuron from the run's interp scores, if it has one."""
    entry = read_neuron_lines(RunLayout(workdir).scores(steer.site, steer.layer),
                              repair=False).get(steer.index)
    if not entry or not entry.get("explanation"):
        return None
    score = entry.get("scores", {}).get("top_and_random")
    shown = "no score" if score is None else f"score {score:.3f}"
    return f"{entry['explanation']} ({shown})"


def steer_report(workdir: str, prompt: str, steer: NeuronSteer, **sampling) -> str:
    """The lines the command prints: the neuron, its explanation, both continuations."""
    trained = load_trained(workdir)
    steer.check(trained.model.config)
    unsteered = generate(trained, prompt, **sampling)
    steered = generate(trained, prompt, steering=(steer,), **sampling)
    how = f"set to {steer.value:g}" if steer.value is not None else f"scaled by {steer.factor:g}"
    lines = [f"prompt:    {prompt!r}",
             f"neuron:    {steer.site} layer {steer.layer} #{steer.index}, {how} from position "
             f"{steer.from_position} (seed {sampling.get('seed', 0)})"]
    explanation = neuron_explanation(workdir, steer)
    if explanation:
        lines.append(f"explained: {explanation}")
    lines += [f"unsteered: {unsteered!r}", f"steered:   {steered!r}"]
    return "\n".join(lines)
