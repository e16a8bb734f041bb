"""Where every array of a run lives: the device mesh, the state's and the batches' shardings.

The mesh has two axes over every device of every process, `data` x `fsdp` (`config.mesh`; -1
takes the devices the other axis leaves). Batches are split over both axes, so each device takes
`micro_batch / (data * fsdp)` rows. Each large parameter, and Adam's two moments of it (which
have its shape, so the same rule gives them its sharding), is split over `fsdp` along one
dimension and replicated over `data`: FSDP (ZeRO-3). XLA's SPMD partitioner inserts the
collectives (all-gather a weight before its use, reduce-scatter its gradient); nothing here
communicates by hand. `fsdp=1` is plain data parallelism: the whole state on every device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from crate_jax.model import ConfigError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
# Both axes split the batch: an `fsdp` device holds a slice of the state and of the batch alike.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# A leaf of at least this many elements (64 KiB in float32) is split over `fsdp`; smaller ones
# are replicated. Splitting saves little memory on a small leaf but costs a collective (an
# all-gather forward, a reduce-scatter backward) whose latency does not shrink with it. Every
# vector of every size preset (biases, LayerNorm scales: at most 4 d = 3072 elements) stays
# whole, every matrix (at least d x d = 16,384 elements at the smallest d, 128) is split.
MIN_SHARDED_ELEMENTS = 2**14


def mesh_shape(mesh_config: Mapping[str, int], device_count: int) -> tuple[int, int]:
    """`(data, fsdp)` of `mesh_config` (`config.mesh`) on `device_count` devices, -1 resolved.

    Raises `ConfigError` naming the keys, their values, the device count and the fix when the
    two do not lay out exactly `device_count` devices.
    """
    sizes = {axis: mesh_config[axis] for axis in MESH_AXES}
    for axis, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or not (size >= 1 or size == -1):
            raise ConfigError(f"mesh.{axis}={size!r} is out of range: it must be a positive "
                              "number of devices, or -1 for the devices the other axis leaves")
    given = ", ".join(f"mesh.{axis}={size}" for axis, size in sizes.items())
    filled = [axis for axis, size in sizes.items() if size == -1]
    if len(filled) > 1:
        raise ConfigError(f"{given}: at most one mesh axis may be -1; give the other a number "
                          f"of devices (this run has {device_count})")
    known = math.prod(size for size in sizes.values() if size != -1)
    if filled:
        if device_count % known:
            other = next(axis for axis in MESH_AXES if axis != filled[0])
            raise ConfigError(
                f"{given}: the {device_count} devices do not split into groups of {known}, so "
                f"mesh.{filled[0]}=-1 cannot take the rest; give mesh.{other} a divisor of "
                f"{device_count} ({', '.join(map(str, _divisors(device_count)))})")
        sizes[filled[0]] = device_count // known
    elif known != device_count:
        raise ConfigError(
            f"{given} lay out {known} devices, but this run has {device_count}; make "
            f"mesh.data * mesh.fsdp = {device_count}, or set one of them to -1 to take the rest")
    return sizes[DATA_AXIS], sizes[FSDP_AXIS]


def make_mesh(mesh_config: Mapping[str, int]) -> Mesh:
    """The `data` x `fsdp` mesh over every device of every process (`jax.devices()`).

    `create_device_mesh` orders the devices for the interconnect: on TPUs, each axis along
    physical rings (splitting one only where the shape asks for it); elsewhere by device id or in
    `jax.devices()` order, both of which keep a process's devices together, so an `fsdp` axis
    no larger than a host stays inside it. A plain `Mesh` is used rather than `jax.make_mesh`,
    whose axes are `Explicit` by default in newer JAX: these are `Auto`, left to the partitioner.
    (Multi-slice TPU jobs would need `create_hybrid_device_mesh`, with `data` across slices.)
    """
    devices = jax.devices()
    shape = mesh_shape(mesh_config, len(devices))
    return Mesh(mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True),
                MESH_AXES)


def partition_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """How a state leaf of `shape` is split over an `fsdp` axis of `fsdp_size` devices.

    A leaf of at least `MIN_SHARDED_ELEMENTS` is split along its largest dimension that the axis
    divides (the first such on a tie): slices are then as even as the leaf allows and the
    dimension left whole is the longest one. Others (scalars, vectors, a leaf no dimension of
    which divides) are replicated.
    """
    if fsdp_size == 1 or math.prod(shape) < MIN_SHARDED_ELEMENTS:
        return P()
    divisible = [axis for axis, size in enumerate(shape) if size % fsdp_size == 0]
    if not divisible:
        return P()
    split = max(divisible, key=lambda axis: (shape[axis], -axis))
    return P(*(FSDP_AXIS if axis == split else None for axis in range(len(shape))))


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
    """A `NamedSharding` for each leaf of `abstract_state` (arrays or `ShapeDtypeStruct`s):
    `partition_spec` of its shape. Optimizer moments have their parameter's shape, hence its
    sharding; counters and the dropout key are small, hence replicated."""
    fsdp_size = mesh.shape[FSDP_AXIS]
    return jax.tree_util.tree_map(
        lambda leaf: NamedSharding(mesh, partition_spec(tuple(leaf.shape), fsdp_size)),
        abstract_state)


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device (metrics, scalars)."""
    return NamedSharding(mesh, P())


def train_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Train batches are `[accumulation_steps, micro_batch, seq + 1]`, split over micro_batch."""
    return NamedSharding(mesh, P(None, BATCH_AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """`[batch, ...]` arrays split over batch: eval batches `[batch, seq + 1]`, logits."""
    return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_rows: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """This process's rows as its part of the global, sharded batch."""
    return jax.make_array_from_process_local_data(sharding, local_rows)


def _divisors(count: int) -> list[int]:
    return [d for d in range(1, count + 1) if count % d == 0]
