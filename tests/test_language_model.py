"""Every variant of the family: builds, trains a step, is causal, and exposes its neuron sites."""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crate_jax.losses import next_token_loss
from crate_jax.model import (
    LanguageModel,
    ModelConfig,
    apply_with_neurons,
    neuron_sites,
    paper_parameter_count,
)

SMALL = dict(vocab_size=512, max_len=32, num_layers=2, embed_dim=32, num_heads=4)
VARIANTS = list(itertools.product(("mssa", "mhsa"), ("ista", "mlp", "none")))
VARIANT_IDS = [f"{a}-{s}" for a, s in VARIANTS]


def _model(attention, sparse_block, **overrides):
    config = ModelConfig(attention=attention, sparse_block=sparse_block, **{**SMALL, **overrides})
    model = LanguageModel(config)
    tokens = jnp.zeros((1, 8), jnp.int32)
    return model, model.init(jax.random.key(0), tokens)["params"]


def _tokens(seed=0, shape=(2, 16)):
    return jax.random.randint(jax.random.key(seed), shape, 0, SMALL["vocab_size"])


@pytest.mark.parametrize(("attention", "sparse_block"), VARIANTS, ids=VARIANT_IDS)
def test_jitted_forward_and_backward_give_finite_loss_near_log_vocab(attention, sparse_block):
    model, params = _model(attention, sparse_block)
    tokens = _tokens()

    @jax.jit
    def loss_and_grads(params):
        return jax.value_and_grad(lambda p: next_token_loss(model.apply({"params": p}, tokens),
                                                            tokens))(params)

    loss, grads = loss_and_grads(params)
    assert np.isfinite(loss)
    assert abs(float(loss) - math.log(SMALL["vocab_size"])) < 0.25
    grad_leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(g).all() for g in grad_leaves)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    # Every parameter gets a gradient signal: none is disconnected from the loss.
    assert all(np.abs(g).max() > 0 for g in grad_leaves)


@pytest.mark.parametrize(("attention", "sparse_block"), VARIANTS, ids=VARIANT_IDS)
def test_changing_token_t_never_changes_anything_before_t(attention, sparse_block):
    model, params = _model(attention, sparse_block)
    tokens = _tokens(seed=1)
    changed_at = 9
    edited = tokens.at[:, changed_at].set((tokens[:, changed_at] + 1) % SMALL["vocab_size"])
    capture = jax.jit(lambda t: apply_with_neurons(model, params, t))
    logits, neurons = capture(tokens)
    edited_logits, edited_neurons = capture(edited)

    np.testing.assert_allclose(edited_logits[:, :changed_at], logits[:, :changed_at], atol=1e-6)
    assert not np.allclose(edited_logits[:, changed_at], logits[:, changed_at])
    for site in neurons:  # [layers, batch, seq, width]
        np.testing.assert_allclose(edited_neurons[site][:, :, :changed_at],
                                   neurons[site][:, :, :changed_at], atol=1e-6, err_msg=site)
        assert not np.allclose(edited_neurons[site][:, :, changed_at],
                               neurons[site][:, :, changed_at]), site


@pytest.mark.parametrize(("attention", "sparse_block"), VARIANTS, ids=VARIANT_IDS)
def test_exposes_exactly_the_neuron_sites_it_has(attention, sparse_block):
    model, params = _model(attention, sparse_block)
    expected = {"ista": {"ista", "attn", "resid"}, "mlp": {"mlp", "attn", "resid"},
                "none": {"attn", "resid"}}[sparse_block]
    assert set(neuron_sites(model.config)) == expected
    _, neurons = apply_with_neurons(model, params, _tokens())
    assert set(neurons) == expected
    widths = {"ista": 128, "mlp": 128, "attn": 32, "resid": 32}
    for site, values in neurons.items():
        assert values.shape == (2, 2, 16, widths[site]), site
    for missing in {"ista", "mlp"} - expected:
        with pytest.raises(ValueError, match=f"neuron site '{missing}' is not in this model"):
            apply_with_neurons(model, params, _tokens(), sites=[missing])


def test_plain_apply_captures_nothing_and_sites_can_be_chosen():
    model, params = _model("mssa", "ista")
    assert isinstance(model.apply({"params": params}, _tokens()), jax.Array)
    _, neurons = apply_with_neurons(model, params, _tokens(), sites=["ista"])
    assert set(neurons) == {"ista"}


def _layer_norm(x, scale, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps) * scale + bias


def test_captured_neurons_are_the_streams_the_model_computes():
    """CRATE's layer output is D z with no residual, and the logits read the last `resid`."""
    model, params = _model("mssa", "ista")
    logits, neurons = apply_with_neurons(model, params, _tokens())
    for layer in range(SMALL["num_layers"]):
        dictionary = np.asarray(params[f"layer_{layer}"]["ista"]["dictionary"])
        np.testing.assert_allclose(neurons["resid"][layer], neurons["ista"][layer] @ dictionary.T,
                                   rtol=1e-5, atol=1e-6)
    final = params["final_norm"]
    embedding = np.asarray(params["token_embedding"]["embedding"])
    expected = _layer_norm(np.asarray(neurons["resid"][-1]), final["scale"], final["bias"])
    np.testing.assert_allclose(logits, expected @ embedding.T, rtol=1e-4, atol=1e-5)


def test_ista_residual_option_adds_the_stream_back():
    model, params = _model("mssa", "ista", ista_residual=True)
    _, neurons = apply_with_neurons(model, params, _tokens())
    dictionary = np.asarray(params["layer_0"]["ista"]["dictionary"])
    assert not np.allclose(neurons["resid"][0], neurons["ista"][0] @ dictionary.T, atol=1e-3)


def test_bfloat16_compute_keeps_float32_params_and_gives_float32_logits():
    model, params = _model("mssa", "ista", dtype="bfloat16")
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
    logits, neurons = apply_with_neurons(model, params, _tokens())
    assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
    assert neurons["ista"].dtype == jnp.bfloat16
    assert abs(float(next_token_loss(logits, _tokens())) - math.log(SMALL["vocab_size"])) < 0.3


def test_dropout_is_active_only_in_training():
    model, params = _model("mhsa", "mlp", dropout_rate=0.5)
    tokens = _tokens()
    evaluation = model.apply({"params": params}, tokens)
    np.testing.assert_array_equal(evaluation, model.apply({"params": params}, tokens))
    trained = model.apply({"params": params}, tokens, train=True,
                          rngs={"dropout": jax.random.key(0)})
    assert not np.allclose(trained, evaluation)


def test_sequence_longer_than_context_is_a_clear_error():
    model, params = _model("mssa", "ista")
    with pytest.raises(ValueError, match="exceeds model.max_len=32"):
        model.apply({"params": params}, jnp.zeros((1, 33), jnp.int32))


PAPER = dict(vocab_size=50304, max_len=1024)
D128 = dict(embed_dim=128, num_heads=4, **PAPER)
D768 = dict(embed_dim=768, num_heads=12, **PAPER)
CRATE = dict(attention="mssa", sparse_block="ista", use_bias=True)
GPT2 = dict(attention="mhsa", sparse_block="mlp", use_bias=False)


@pytest.mark.parametrize(("name", "settings", "millions"), [
    ("CRATE 1L", {**CRATE, **D128, "num_layers": 1}, 6.54),
    ("CRATE 2L", {**CRATE, **D128, "num_layers": 2}, 6.64),
    ("CRATE 3L", {**CRATE, **D128, "num_layers": 3}, 6.74),
    ("CRATE B", {**CRATE, **D768, "num_layers": 12}, 81.15),
    ("GPT-2 1L", {**GPT2, **D128, "num_layers": 1}, 6.64),
    ("GPT-2 2L", {**GPT2, **D128, "num_layers": 2}, 6.83),
    ("GPT-2 3L", {**GPT2, **D128, "num_layers": 3}, 7.03),
    ("GPT-2 S", {**GPT2, **D768, "num_layers": 6}, 81.11),
    ("GPT-2 B", {**GPT2, **D768, "num_layers": 12}, 123.59),
])
def test_parameter_counts_match_the_paper(name, settings, millions):
    count = paper_parameter_count(ModelConfig(**settings))
    assert abs(count / 1e6 - millions) <= 0.01, f"{name}: {count / 1e6:.3f}M"


def test_model_config_rejects_impossible_values():
    from crate_jax.model import ConfigError
    base = ModelConfig(**SMALL)
    for change, message in [
        (dict(attention="mhssa"), "model.attention='mhssa' is not one of mssa, mhsa"),
        (dict(sparse_block="sae"), "model.sparse_block='sae' is not one of ista, mlp, none"),
        (dict(num_heads=5), "not divisible by model.num_heads=5"),
        (dict(ista_steps=0), "model.ista_steps must be a positive integer"),
        (dict(dtype="float16"), "model.dtype='float16'"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            dataclasses.replace(base, **change)
