"""Versions written next to every result, so that a number can be traced and reproduced."""

from __future__ import annotations

import platform


def package_versions() -> dict[str, str]:
    import flax
    import jax
    import optax
    import orbax.checkpoint as ocp

    return {"python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__,
            "orbax_checkpoint": getattr(ocp, "__version__", "unknown")}
