"""A process's resident memory: its peak so far, and handing back what a finished stage freed.

Why the second: a study job runs its stages one after another in one process (train, then the
run's interp, then its untrained control's), and each stage's peak stacked on what the stages
before it left resident: the compiled programs JAX keeps for functions nobody calls again, and
heap pages the C allocator keeps after Python and XLA free them. Measured on one job of the
default study (crate, planted `tiny`, 2-core CPU): 1.34 GB peak, 0.95 GB with this between
stages (and tensorboardX kept from importing torch: `train/metrics.py`); two workers at once
are what a study's memory figure adds up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource

import jax


def peak_memory_bytes(workers: bool = False) -> int:
    """This process's peak resident memory so far, in bytes (Linux's `ru_maxrss` is in KiB): what
    `benchmarks/study_breakdown.py` attributes to stages. With `workers`, the largest of it and of
    every process it started and waited for (a study's worker processes): a study's manifest's
    figure, per process; with `workers` runs at a time, their sum can be in use at once."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if workers:
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak * 1024


def release_memory() -> None:
    """Drops JAX's compiled programs and traces (a later call recompiles, or loads them from the
    persistent compilation cache where one is on), collects garbage, and on glibc returns the
    heap's free pages to the system (`malloc_trim`); elsewhere the last step is skipped."""
    jax.clear_caches()
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()
