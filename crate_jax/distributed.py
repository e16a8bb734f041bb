"""Joining a multi-process JAX job, before anything touches a device.

One command runs on every process of a job (every TPU VM worker of a pod slice, every SLURM task,
every local CPU process); `jax.distributed.initialize` connects them, after which `jax.devices()`
lists the devices of all processes and one `jit` spans them (crate_jax/train/sharding.py).

Where the job's shape comes from, first match wins:
1. flags: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (all three);
2. the environment variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`;
3. a cluster JAX detects itself: a Cloud TPU VM (a pod slice's workers find each other through the
   metadata server), a SLURM step with more than one task, an Open MPI job with more than one rank.
Otherwise the process runs alone and nothing is initialised: a laptop run never opens a port.

Why agreement matters: every process must take the same decisions (which step to save at, when to
stop) or the next collective waits forever. Stops therefore go through JAX's preemption sync point
(`stop_agreed_at`), and only process 0 writes files other than checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

import jax
import numpy as np

# How long a process waits for the others to join before giving up (JAX's default is 300 s).
JOIN_TIMEOUT_S = 300
T = TypeVar("T")
_ADDRESS = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}$")


class DistributedError(RuntimeError):
    """The job's shape is inconsistent or the process could not join it; says which and how."""


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """How this process joins its job. `coordinator_address` etc. None: JAX detects the cluster."""

    source: str  # "flags", "environment" or the detected cluster's name
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def job_spec(coordinator_address: str | None = None, num_processes: int | None = None,
             process_id: int | None = None,
             environ: Mapping[str, str] = os.environ) -> JobSpec | None:
    """The job this process belongs to, or None when it runs alone (see the module docstring).

    Raises DistributedError for a half-given job (an address without a process count, an id out of
    range), before any work: a process that joined with a wrong id would wait minutes to fail.
    """
    given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
             "--process_id": process_id}
    if any(value is not None for value in given.values()):
        return _explicit_spec("flags", given)
    from_environment = {"JAX_COORDINATOR_ADDRESS": environ.get("JAX_COORDINATOR_ADDRESS"),
                        "JAX_NUM_PROCESSES": environ.get("JAX_NUM_PROCESSES"),
                        "JAX_PROCESS_ID": environ.get("JAX_PROCESS_ID")}
    if from_environment["JAX_COORDINATOR_ADDRESS"]:
        return _explicit_spec("environment", {
            name: _integer_variable(name, value) if name != "JAX_COORDINATOR_ADDRESS" else value
            for name, value in from_environment.items()})
    cluster = _detected_cluster(environ)
    return JobSpec(source=cluster) if cluster else None


def join(spec: JobSpec | None) -> str | None:
    """Initialises `jax.distributed` for `spec` (nothing for None or a 1-process job); returns a
    line saying which process this is, for the log, or None when it runs alone."""
    if spec is None or spec.num_processes == 1:
        return None
    try:
        jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                                   num_processes=spec.num_processes, process_id=spec.process_id,
                                   initialization_timeout=JOIN_TIMEOUT_S)
    except Exception as error:  # a refused connection, a timeout, a duplicate id: JAX's wording
        where = spec.coordinator_address or f"the {spec.source} cluster's coordinator"
        cause = " ".join(str(error).split())[:300]
        raise DistributedError(
            f"process {spec.process_id if spec.process_id is not None else '?'} could not join "
            f"the job at {where} ({type(error).__name__}: {cause}); start every process with the "
            "same coordinator address and process count, a distinct process id, and process 0 "
            "on the coordinator's host") from error
    return (f"process {jax.process_index()} of {jax.process_count()} (joined via {spec.source}"
            f"{', coordinator ' + spec.coordinator_address if spec.coordinator_address else ''}"
            f"); {jax.local_device_count()} local of {jax.device_count()} devices")


def is_main_process() -> bool:
    """The one process that writes metrics, reports, configs and progress (checkpoints: all)."""
    return jax.process_index() == 0


def main_process_first(what: str, produce: Callable[[], T]) -> T:
    """`produce()` on process 0, then, once it has finished, on the others.

    For outputs written into the shared workdir (token arrays, the tokenizer): process 0 writes
    them, the others then find and load them instead of writing the same files at the same time.
    Where a process has its own disk, it finds nothing and produces its own identical copy (the
    work is deterministic). `what` names the barrier, for the error a stuck one gives.
    """
    if jax.process_count() == 1:
        return produce()
    from jax.experimental import multihost_utils
    result = produce() if is_main_process() else None
    multihost_utils.sync_global_devices(f"crate_jax: {what} ready on process 0")
    return result if is_main_process() else produce()


def stop_agreed_at(step: int) -> bool:
    """Whether every process of a multi-process job stops after `step` (a preemption notice,
    SIGTERM, reached any of them). Every process must call this at every step: JAX's preemption
    sync manager picks one step all of them reach and answers True there, on all of them alike.
    A per-process flag would stop one process a step before another, whose next collective would
    then wait forever."""
    from jax.experimental import multihost_utils
    return bool(multihost_utils.reached_preemption_sync_point(step))


def local_digest(tree) -> str:
    """sha256 of this process's part of `tree`'s arrays (each addressable shard, in index order).

    Printed by every process at the end of a multi-process run: where an array is replicated
    across processes (the `data` mesh axis), their digests must be equal, which shows that the
    replicas did not drift apart. FSDP-sharded arrays differ by design (each holds its slice).
    """
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        shards = sorted(leaf.addressable_shards, key=lambda shard: str(shard.index))
        for shard in shards[:1] if leaf.is_fully_replicated else shards:
            digest.update(np.ascontiguousarray(np.asarray(shard.data)).tobytes())
    return digest.hexdigest()


def _explicit_spec(source: str, given: dict[str, object]) -> JobSpec:
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise DistributedError(
            f"a multi-process job needs all of {', '.join(given)}; {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing (from the {source})")
    address, count, index = given.values()
    address_name, count_name, index_name = given.keys()
    if not _ADDRESS.match(str(address)):
        raise DistributedError(f"{address_name}={address!r} is not HOST:PORT (e.g. "
                               "127.0.0.1:12355, or process 0's host name and a free port)")
    if not isinstance(count, int) or count < 1:
        raise DistributedError(f"{count_name}={count!r} must be a positive integer")
    if not isinstance(index, int) or not 0 <= index < count:
        raise DistributedError(f"{index_name}={index!r} must be in 0..{count - 1} "
                               f"({count_name}={count})")
    return JobSpec(source=source, coordinator_address=str(address), num_processes=count,
                   process_id=index)


def _integer_variable(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} must be an integer"
                               ) from None


def _detected_cluster(environ: Mapping[str, str]) -> str | None:
    """The name of a multi-process cluster JAX's own detection will configure, or None.

    Decided here from what each cluster sets, rather than by trying `initialize()` and reading
    its error: a single SLURM task or a laptop must not become a 1-process 'job' with a port.
    """
    if _tasks(environ, "SLURM_NTASKS") > 1 and "SLURM_STEP_NODELIST" in environ:
        return "SLURM"
    if _tasks(environ, "OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    if _on_cloud_tpu_vm() and "TPU_SKIP_MDS_QUERY" not in environ:
        return "Cloud TPU"  # one worker or many: JAX asks the metadata server which
    return None


def _tasks(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ.get(name, "1"))
    except ValueError:
        return 1


def _on_cloud_tpu_vm() -> bool:
    """JAX's own finding at import (TPU chips on the PCI bus and libtpu installed). Private in
    JAX, so read defensively: without it, a pod is joined by the flags or variables above."""
    try:
        from jax._src import cloud_tpu_init
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))
