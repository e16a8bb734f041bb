"""Tests run on the CPU, deterministically, whatever accelerators the machine has."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
