"""The study's persistent compilation cache (`crate_jax/compilation_cache.py`): programs land in
the given folder while the block runs, the user's own cache is left alone, and JAX's settings
are restored after."""

import jax
import jax.numpy as jnp
import pytest

from crate_jax.compilation_cache import compilation_cache_in


@pytest.fixture
def no_users_cache(monkeypatch):
    """No cache of the caller's (the suite runs with one, `conftest.py`), restored after."""
    previous = jax.config.jax_compilation_cache_dir
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    jax.config.update("jax_compilation_cache_dir", previous)


def _compile_something(size: int) -> None:
    jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((size, size))).block_until_ready()


def test_programs_are_cached_in_the_folder_and_the_settings_restored(tmp_path, no_users_cache):
    before = jax.config.jax_compilation_cache_dir
    with compilation_cache_in(tmp_path / "cache") as used:
        _compile_something(24)
    assert used == tmp_path / "cache"
    assert any(path.name.startswith("jit__lambda") for path in used.iterdir())
    assert jax.config.jax_compilation_cache_dir == before


def test_a_cache_the_user_chose_is_left_alone(tmp_path, no_users_cache):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))
    with compilation_cache_in(tmp_path / "study") as used:
        _compile_something(40)
    assert used is None and not (tmp_path / "study").exists()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "users")
