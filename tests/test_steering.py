"""Steering neurons through the model's `steering` collection (crate_jax/model/steering.py)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from crate_jax.generation import NeuronSteer, steered_logits
from crate_jax.model import ConfigError, LanguageModel, ModelConfig, neuron_sites

VARIANTS = ("crate", "gpt2", "no_ista", "standard_attention", "ista_to_mlp")
TINY = dict(vocab_size=64, max_len=32, num_layers=2, embed_dim=16, num_heads=2)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 12)), jnp.int32)


def tiny_model(variant: str):
    """`variant`'s model at a tiny size, with random parameters."""
    model_keys = importlib.import_module(f"configs.{variant}").get_config("tiny").model.to_dict()
    model = LanguageModel(ModelConfig.from_mapping({**model_keys, **TINY}))
    return model, model.init(jax.random.key(1), TOKENS)["params"]


def with_zeroed(params, path: tuple[str, ...], index, axis: int):
    """`params` with slice `index` along `axis` of the array at `path` set to zero."""
    flat = traverse_util.flatten_dict(params)
    array = np.array(flat[path])
    np.moveaxis(array, axis, 0)[index] = 0
    return traverse_util.unflatten_dict({**flat, path: jnp.asarray(array)})


def test_no_steering_is_the_plain_forward_pass():
    model, params = tiny_model("crate")
    plain = jax.jit(model.apply)({"params": params}, TOKENS)
    np.testing.assert_array_equal(steered_logits(model, params, TOKENS, ()), plain)


@pytest.mark.parametrize("variant, site, path, axis", [
    ("crate", "ista", ("layer_1", "ista", "dictionary"), 1),   # its dictionary column
    ("gpt2", "mlp", ("layer_1", "mlp", "out", "kernel"), 0),   # its output row
])
def test_steering_a_neuron_to_zero_removes_it(variant, site, path, axis):
    model, params = tiny_model(variant)
    index = 5
    steered = steered_logits(model, params, TOKENS, [NeuronSteer(site, 1, index, value=0.0)])
    removed = steered_logits(model, with_zeroed(params, path, index, axis), TOKENS, ())
    np.testing.assert_allclose(steered, removed, rtol=0, atol=1e-5)
    assert not np.allclose(steered, steered_logits(model, params, TOKENS, ()), atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_steering_from_a_position_leaves_earlier_positions_alone(variant):
    model, params = tiny_model(variant)
    plain = np.asarray(steered_logits(model, params, TOKENS, ()))
    start = 7
    for site in neuron_sites(model.config):
        steer = NeuronSteer(site, 0, 3, value=4.0, from_position=start)
        steered = np.asarray(steered_logits(model, params, TOKENS, [steer]))
        np.testing.assert_array_equal(steered[:, :start], plain[:, :start], err_msg=site)
        changed = np.abs(steered[:, start:] - plain[:, start:]).max(axis=(0, 2))
        assert changed[0] > 1e-4, (site, changed)


def test_a_factor_of_one_changes_nothing_and_a_factor_scales():
    model, params = tiny_model("gpt2")
    plain = steered_logits(model, params, TOKENS, ())
    one = steered_logits(model, params, TOKENS, [NeuronSteer("attn", 1, 2, factor=1.0)])
    np.testing.assert_allclose(one, plain, rtol=0, atol=1e-6)
    doubled = steered_logits(model, params, TOKENS, [NeuronSteer("resid", 1, 2, factor=3.0)])
    assert not np.allclose(doubled, plain, atol=1e-4)


@pytest.mark.parametrize("steer, message", [
    (NeuronSteer("ista", 0, 1, value=1.0), r"site 'ista' is not in this model .* it has: mlp"),
    (NeuronSteer("mlp", 2, 1, value=1.0), r"layer 2 is out of range: .* layers 0..1"),
    (NeuronSteer("mlp", 1, 64, value=1.0), r"index 64 is out of range: mlp has neurons 0..63"),
    (NeuronSteer("attn", 1, 1), "exactly one of value .* or factor"),
    (NeuronSteer("attn", 1, 1, value=1.0, factor=2.0), "exactly one of value .* or factor"),
])
def test_steering_a_neuron_the_model_lacks_is_a_config_error(steer, message):
    model, params = tiny_model("gpt2")
    with pytest.raises(ConfigError, match=message):
        steered_logits(model, params, TOKENS, [steer])


def test_neuron_specs_parse():
    assert NeuronSteer.parse("ista:1:137", value=5.0) == NeuronSteer("ista", 1, 137, value=5.0)
    with pytest.raises(ConfigError, match=r"not site:layer:index .* sites: ista, mlp, attn"):
        NeuronSteer.parse("ista:1")
