"""JAX's persistent compilation cache, for work that compiles the same programs again and again.

Every run of a study compiles the same train step, evaluation and capture programs as the other
runs of its variant (and every untrained control the same interp programs as its run): a study
of 5 seeds compiles each of them 10 times. With the cache, the first compilation of a program
is written to disk and the others load it. A loaded executable is the one compiled, so results
are bit-identical; a cache that cannot be read or written only costs the compilation.

A cache the user chose (`JAX_COMPILATION_CACHE_DIR`, or `jax_compilation_cache_dir` set in
code) is left alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")


@contextlib.contextmanager
def compilation_cache_in(directory: Path) -> Iterator[Path | None]:
    """Caches every compiled program under `directory` while the block runs (even the quick
    ones: on a CPU most compile in under the default second); yields the directory in use, or
    None where the user's own cache is in use."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        yield None
        return
    previous = {name: getattr(jax.config, name) for name in _SETTINGS}
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()  # the cache reads its settings once: read them again
    try:
        yield directory
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()
