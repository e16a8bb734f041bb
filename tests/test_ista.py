"""The ISTA block against an independent NumPy computation of the paper's formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crate_jax.model import SparseCodingBlock, ista_code

ETA = LAMBDA = 0.1


def numpy_two_step_ista(x, dictionary, eta=ETA, lam=LAMBDA):
    """z1 = relu(eta D^T x - eta lambda); z2 = relu(z1 + eta D^T (x - D z1) - eta lambda)."""
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    z1 = relu(eta * x @ dictionary - eta * lam)
    z2 = relu(z1 + eta * (x - z1 @ dictionary.T) @ dictionary - eta * lam)
    return z1, z2


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 16)).astype(np.float64)
    # Scaled so that roughly half the code is active: zeros and non-zeros are both exercised.
    dictionary = rng.normal(size=(16, 64)) * 0.5
    return x, dictionary


def test_two_steps_match_numpy(inputs):
    x, dictionary = inputs
    _, expected = numpy_two_step_ista(x, dictionary)
    code = ista_code(jnp.asarray(x, jnp.float32), jnp.asarray(dictionary, jnp.float32),
                     num_steps=2, step_size=ETA, threshold=LAMBDA)
    np.testing.assert_allclose(code, expected, rtol=1e-5, atol=1e-6)
    assert 0.1 < (expected > 0).mean() < 0.9, "fixture should give a partly active code"


def test_one_step_is_nonnegative_soft_threshold(inputs):
    x, dictionary = inputs
    expected_z1, _ = numpy_two_step_ista(x, dictionary)
    code = ista_code(jnp.asarray(x, jnp.float32), jnp.asarray(dictionary, jnp.float32),
                     num_steps=1, step_size=ETA, threshold=LAMBDA)
    np.testing.assert_allclose(code, expected_z1, rtol=1e-5, atol=1e-6)
    soft_threshold = np.maximum(ETA * (x @ dictionary) - ETA * LAMBDA, 0)
    np.testing.assert_allclose(code, soft_threshold, rtol=1e-5, atol=1e-6)


def test_more_steps_keep_descending_the_lasso_objective(inputs):
    """Each ISTA step with a small enough step size lowers 1/2|x - Dz|^2 + lambda |z|_1."""
    x, dictionary = inputs
    dictionary = dictionary / np.linalg.norm(dictionary, 2)  # step 0.1 < 1/L: monotone descent
    x32, d32 = jnp.asarray(x, jnp.float32), jnp.asarray(dictionary, jnp.float32)

    def objective(code):
        residual = x - np.asarray(code) @ dictionary.T
        return 0.5 * (residual ** 2).sum() + LAMBDA * np.abs(code).sum()

    values = [objective(ista_code(x32, d32, steps, ETA, LAMBDA)) for steps in (1, 2, 5, 20)]
    assert all(later < earlier for earlier, later in zip(values, values[1:], strict=False))


def test_block_code_is_nonnegative_with_exact_zeros_and_output_is_dictionary_times_code():
    block = SparseCodingBlock()
    x = jax.random.normal(jax.random.key(1), (2, 7, 32))
    variables = {"params": block.init(jax.random.key(0), x)["params"]}
    output, state = block.apply(variables, x, mutable=["neurons_ista"])
    (code,) = state["neurons_ista"]["ista"]
    dictionary = np.asarray(variables["params"]["dictionary"])
    assert dictionary.shape == (32, 128)
    code = np.asarray(code)
    assert code.shape == (2, 7, 128)
    assert (code >= 0).all()
    assert (code == 0).any() and (code > 0).any()
    _, expected = numpy_two_step_ista(np.asarray(x, np.float64), dictionary.astype(np.float64))
    np.testing.assert_allclose(code, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(code == 0, expected == 0)
    np.testing.assert_allclose(output, code @ dictionary.T, rtol=1e-5, atol=1e-6)


def test_dictionary_init_is_pytorch_kaiming_uniform_on_the_papers_4d_by_d_tensor():
    """The paper calls `torch.nn.init.kaiming_uniform_` on a `[4d, d]` tensor: fan_in is its
    size(1) = d, so D ~ U(-b, b) with b = gain * sqrt(3 / fan_in) = sqrt(2) * sqrt(3 / d)."""
    width = 128
    block = SparseCodingBlock()
    params = block.init(jax.random.key(0), jnp.zeros((1, 1, width)))["params"]
    dictionary = np.asarray(params["dictionary"])
    assert dictionary.shape == (width, 4 * width)  # stored as [d, 4d], the transpose of theirs
    bound = np.sqrt(2.0) * np.sqrt(3.0 / width)
    assert np.abs(dictionary).max() <= bound
    assert np.abs(dictionary).max() > 0.98 * bound  # 65k samples reach the bound's edge
    assert np.abs(dictionary).max() > np.sqrt(6.0 / (4 * width))  # not fan_in = 4d
    np.testing.assert_allclose(dictionary.std(), bound / np.sqrt(3), rtol=0.02)
