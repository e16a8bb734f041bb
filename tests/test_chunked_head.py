"""`model.head_impl='chunked'`: the tied head's training loss a block of positions at a time
(`crate_jax/model/chunked_head.py`) is the logits path's function, loss and gradients alike."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_helpers import tiny_config

from configs import crate, gpt2
from crate_jax.losses import cross_entropy
from crate_jax.model import ConfigError, model_from_config, model_identity
from crate_jax.model.chunked_head import (
    block_length,
    chunked_next_token_loss,
    resolve_head_impl,
)
from crate_jax.train.optimizer import make_optimizer
from crate_jax.train.sharding import make_mesh
from crate_jax.train.state import initial_state
from crate_jax.train.step import _mean_train_loss


def test_blocks_are_the_longest_divisor_of_the_sequence_that_fits_the_rows():
    assert block_length(256, 16) == 16          # 16 x 16 = 256 rows
    assert block_length(64, 8, block_rows=64) == 8
    assert block_length(12, 8, block_rows=40) == 4   # 5 would fit but does not divide 12
    assert block_length(7, 1000) == 1            # never less than one position


@pytest.mark.parametrize("block_rows", [24, 512])  # several blocks of 3 positions; one block
def test_the_chunked_loss_and_its_gradients_equal_the_whole_logits(block_rows):
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(8, 12, 16)), jnp.float32)
    embedding = jnp.asarray(rng.normal(size=(50, 16)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (8, 12)), jnp.int32)

    def whole(hidden, embedding):
        return cross_entropy(jnp.einsum("bsd,vd->bsv", hidden, embedding), targets).mean()

    def chunked(hidden, embedding):
        return chunked_next_token_loss(hidden, embedding, targets, block_rows=block_rows)

    expected = jax.value_and_grad(whole, argnums=(0, 1))(hidden, embedding)
    actual = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))(hidden, embedding)
    assert float(actual[0]) == pytest.approx(float(expected[0]), rel=1e-6)
    for got, want in zip(actual[1], expected[1], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # A cotangent other than 1 scales both gradients (the backward pass only scales).
    _, pullback = jax.vjp(chunked, hidden, embedding)
    for got, want in zip(pullback(jnp.float32(2.5)), expected[1], strict=True):
        np.testing.assert_allclose(got, 2.5 * want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("module, dtype, tolerance", [
    (crate, "float32", 1e-5), (gpt2, "float32", 1e-5), (crate, "bfloat16", 2e-2)])
def test_a_models_training_loss_and_gradients_are_the_same_under_either_head(
        module, dtype, tolerance):
    config = tiny_config(module)
    config.model.dtype = dtype
    mesh = make_mesh(config.mesh)
    windows = jnp.asarray(np.random.default_rng(1).integers(
        0, config.model.vocab_size, (4, 33)), jnp.int32)
    results = {}
    for head_impl in ("logits", "chunked"):
        config.model.head_impl = head_impl
        model = model_from_config(config)
        params = initial_state(model, make_optimizer(config.train), seed=0).params
        results[head_impl] = jax.jit(jax.value_and_grad(
            lambda params, model=model: _mean_train_loss(
                model, params, windows, mesh, jax.random.key(0))))(params)
    (loss, gradients), (chunked_loss, chunked_gradients) = results["logits"], results["chunked"]
    assert float(chunked_loss) == pytest.approx(float(loss), rel=tolerance)
    scale = max(float(jnp.abs(leaf).max()) for leaf in jax.tree_util.tree_leaves(gradients))
    for got, want in zip(jax.tree_util.tree_leaves(chunked_gradients),
                         jax.tree_util.tree_leaves(gradients), strict=True):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * scale)


def test_auto_is_the_chunked_head_on_a_cpu_and_whole_logits_elsewhere():
    assert [resolve_head_impl("auto", platform) for platform in ("cpu", "gpu", "tpu")] == [
        "chunked", "logits", "logits"]
    assert [resolve_head_impl(forced, "gpu") for forced in ("logits", "chunked")] == [
        "logits", "chunked"]
    # On this CPU the default computes the chunked head's loss and gradients, bit for bit.
    config = tiny_config()
    assert config.model.head_impl == "auto"
    mesh = make_mesh(config.mesh)
    windows = jnp.asarray(np.random.default_rng(2).integers(
        0, config.model.vocab_size, (2, 33)), jnp.int32)
    results = []
    for head_impl in ("auto", "chunked", "logits"):
        config.model.head_impl = head_impl
        model = model_from_config(config)
        params = initial_state(model, make_optimizer(config.train), seed=0).params
        results.append(jax.jit(jax.value_and_grad(
            lambda params, model=model: _mean_train_loss(
                model, params, windows, mesh, jax.random.key(0))))(params))
    auto, chunked, logits = (jax.tree_util.tree_leaves(result) for result in results)
    for got, want in zip(auto, chunked, strict=True):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(got, want) for got, want in zip(auto, logits, strict=True))


def test_head_impl_is_a_speed_setting_checked_by_name():
    config = tiny_config()
    config.model.head_impl = "fused"
    with pytest.raises(ConfigError, match=r"head_impl.*'fused'.*logits.*chunked"):
        model_from_config(config)
    # Not part of which model it is: a run resumes, and its interp results hold, under either.
    assert "head_impl" not in model_identity(tiny_config().model.to_dict())
