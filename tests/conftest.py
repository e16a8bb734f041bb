"""Tests run on the CPU, deterministically, whatever accelerators the machine has."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """The stdlib corpus and its tokens, prepared once; each run copies `run/data/`."""
    from run_helpers import tiny_config

    from crate_jax.data.token_arrays import prepare_token_arrays

    root = tmp_path_factory.mktemp("prepared")
    config = tiny_config()
    config.data.data_dir = str(root / "tfds")
    prepare_token_arrays(config.data, config.model.vocab_size, root / "run")
    return root


@pytest.fixture(scope="session")
def trained(prepared, tmp_path_factory):
    """A tiny CRATE trained `TRAINED_STEPS` steps on the prepared tokens, once per session; the
    interp tests copy it (`run_helpers.copy_run`) rather than train their own."""
    from run_helpers import interp_config, workdir_with_data

    from crate_jax.train.loop import train_and_evaluate

    workdir = workdir_with_data(prepared, tmp_path_factory.mktemp("trained"), "trained")
    train_and_evaluate(interp_config(prepared, {}), workdir)
    return workdir
