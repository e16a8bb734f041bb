"""Sampling with and without the key-value cache, and the steering CLI on a trained run."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from run_helpers import REPO, raises_user_error
from test_steering import VARIANTS, tiny_model

from crate_jax.generation import (
    NeuronSteer,
    generate,
    generate_tokens,
    load_trained,
    sample_token,
)
from crate_jax.input_checks import WorkdirError
from crate_jax.model import ConfigError

PROMPT = [3, 14, 15, 9, 26, 5]
SAMPLED = dict(temperature=0.9, top_k=20, top_p=0.95, seed=7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_cache_changes_no_token(variant):
    """Greedy and (CRATE, GPT-2) sampled with the same key, continuations are the same with and
    without the cache."""
    model, params = tiny_model(variant)
    sampled = (SAMPLED,) if variant in ("crate", "gpt2") else ()
    for settings in (dict(temperature=0.0), *sampled):
        cached, uncached = (generate_tokens(model, params, PROMPT, 8, use_cache=use_cache,
                                            **settings) for use_cache in (True, False))
        assert cached == uncached, settings
        assert len(cached) == 8


def test_steered_generation_is_the_same_with_and_without_the_cache():
    model, params = tiny_model("crate")
    steer = NeuronSteer("ista", 1, 4, value=3.0, from_position=len(PROMPT) + 2)
    outputs = [generate_tokens(model, params, PROMPT, 10, steering=[steer], use_cache=use_cache,
                               **SAMPLED) for use_cache in (True, False)]
    assert outputs[0] == outputs[1]


def test_a_seed_fixes_the_sample():
    model, params = tiny_model("gpt2")
    runs = [generate_tokens(model, params, PROMPT, 16, temperature=1.0, seed=seed)
            for seed in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]


def test_filters_leave_only_the_most_likely_tokens():
    logits = jnp.log(jnp.asarray([[0.1, 0.5, 0.3, 0.1]]))
    keys = [jax.random.key(seed) for seed in range(40)]
    assert {int(sample_token(logits, key, 1.0, 1, 1.0)[0]) for key in keys} == {1}
    assert {int(sample_token(logits, key, 1.0, 0, 0.7)[0]) for key in keys} == {1, 2}
    assert {int(sample_token(logits, key, 1.0, 2, 1.0)[0]) for key in keys} == {1, 2}
    assert int(sample_token(logits, keys[0], 0.0, 0, 1.0)[0]) == 1


def test_a_prompt_and_continuation_longer_than_the_context_is_a_config_error():
    model, params = tiny_model("crate")
    with pytest.raises(ConfigError, match=r"plus max_new_tokens=30 exceed model.max_len=32; "
                                          r".* at most 26 new tokens"):
        generate_tokens(model, params, PROMPT, 30)


def test_a_workdir_without_a_run_is_a_user_error(tmp_path):
    with raises_user_error(WorkdirError, "holds no trained run .* train one first"):
        load_trained(tmp_path)


def test_a_trained_run_continues_a_prompt(trained):
    run = load_trained(trained)
    texts = [generate(run, "def main(", max_new_tokens=12, temperature=0.8, seed=3, use_cache=c)
             for c in (True, True, False)]
    assert texts[0] == texts[1] == texts[2] and texts[0]


def steer_command(workdir, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crate_jax.steer", f"--workdir={workdir}",
                           "--prompt=import os", "--max_new_tokens=8", *arguments], cwd=REPO,
                          env={"JAX_PLATFORMS": "cpu", "PATH": ""}, capture_output=True,
                          text=True, timeout=120)


def test_the_steer_command_prints_both_continuations(trained):
    result = steer_command(trained, "--neuron=ista:1:7", "--value=8")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[1].startswith("neuron:    ista layer 1 #7, set to 8 from position 0")
    assert lines[-2].startswith("unsteered: ") and lines[-1].startswith("steered:   ")
    assert lines[-2][len("unsteered: "):] != lines[-1][len("steered:   "):]


def test_a_bad_neuron_is_one_fatal_line(trained):
    result = steer_command(trained, "--neuron=mlp:0:1", "--value=1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "FATAL: neuron site 'mlp' is not in this model (attention=mssa, sparse_block=ista); "
        "it has: ista, attn, resid"]


def test_the_steer_command_shows_the_neurons_explanation(tmp_path):
    from crate_jax.generation import neuron_explanation
    from crate_jax.layout import RunLayout

    scores = RunLayout(tmp_path).scores("ista", 1)
    scores.parent.mkdir(parents=True)
    scores.write_text('{"neuron": 7, "scores": {"top_and_random": 0.4567}, "failures": {}, '
                      '"explanation": "fires on \' return\'"}\n')
    assert neuron_explanation(str(tmp_path), NeuronSteer("ista", 1, 7, value=1.0)) == \
        "fires on ' return' (score 0.457)"
    assert neuron_explanation(str(tmp_path), NeuronSteer("ista", 1, 8, value=1.0)) is None
    assert neuron_explanation(str(tmp_path), NeuronSteer("attn", 0, 7, value=1.0)) is None
