"""Tests run on the CPU, deterministically, whatever accelerators the machine has."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the session: this process and every process it starts
# (`python -m crate_jax.main` runs, launch/ jobs, the notebook's kernel inherit the environment).
# The suite compiles the same tiny programs again and again, in fresh `jax.jit` wrappers and fresh
# processes; the cache hands back the executable XLA would compile again, so only time changes.
# A cache the caller configured is used as is and kept; JAX_COMPILATION_CACHE_DIR= (empty) runs
# without one.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="crate_jax_tests_xla_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# Most of the suite's programs compile in under a second, the cache's default threshold.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


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


@pytest.fixture(scope="session")
def three_step_runs(prepared, tmp_path_factory):
    """`(variant, layout) -> workdir` of a finished 3-step run (`run_helpers.train_three_steps`),
    each trained once per session: the sharding and multi-process tests share the baselines."""
    from run_helpers import train_three_steps, workdir_with_data

    done = {}

    def run(variant: str, layout: str):
        if (variant, layout) not in done:
            workdir = workdir_with_data(prepared, tmp_path_factory.mktemp(variant), layout)
            train_three_steps(workdir, prepared, variant, layout)
            done[variant, layout] = workdir
        return done[variant, layout]

    return run
