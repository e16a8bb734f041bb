"""Save and restore the training state with the run's metadata, and explain what went wrong.

The training loop sees one small object, `Checkpointer`; orbax stays behind it, so that a corrupt
file, a checkpoint from another config or a stray directory surfaces as one `CheckpointError`
that names the step directory, the problem and the fix, not as a tensorstore trace.

Layout on disk (orbax's `CheckpointManager` with a Composite of two items):

    <directory>/<step>/state/   the state pytree's arrays (OCDBT), with a tree of shapes and dtypes
    <directory>/<step>/meta/    the `meta` dict as JSON (config, sampler position, versions, ...)

A save is written into `<step>.orbax-checkpoint-tmp...` and renamed to `<step>` once every item
is on disk (on object stores without atomic rename orbax writes `commit_success.txt` last
instead). Orbax lists only finalised step directories, so a process killed mid-save leaves
nothing that `latest_step()` can pick; the next save of that step removes the leftover.

A save that fails (a full disk) or a restore that fails (a corrupt file) ends as that one
`CheckpointError` and nothing else (`orbax_behaviour.quiet_orbax`).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from crate_jax.train.orbax_behaviour import quiet_orbax

STATE_ITEM = "state"
META_ITEM = "meta"
PARAMS_KEY = "params"  # the state's subtree that `restore_params` reads
# How many differing parameters an incompatibility message names before summarising the rest.
MAX_NAMED_DIFFERENCES = 5
MAX_CAUSE_CHARS = 200
_SAVE_FIX = ("make that directory writable and check free disk space, then rerun to resume from "
             "the last checkpoint")
# A full disk and an exceeded quota: an OSError from orbax's own writes, a ValueError ending in
# "[os_error_code='28']" from tensorstore's.
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class CheckpointError(RuntimeError):
    """A checkpoint could not be saved or restored; the message names the path and the fix."""


class Checkpointer:
    """Keeps the last `keep` checkpoints of one run in `directory`, one every `save_every` steps.

    Saves are asynchronous: `save` returns once the arrays are copied off the device, and the
    files are written in the background. `wait()` (and `close()`) block until they are on disk.
    The step's directory is created before `save` returns, though: a directory that cannot take
    a checkpoint (read-only, full) fails that `save` at once. Created in the background (orbax's
    default), its failure surfaced only at the next save, and the threads waiting for it held
    the process for orbax's 300 s signal timeout.
    """

    def __init__(self, directory: str | os.PathLike, save_every: int, keep: int | None = 3,
                 async_save: bool = True) -> None:
        if save_every < 1:
            raise ValueError(f"save_every must be a positive number of steps, got {save_every}")
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be a positive number of checkpoints or None, got {keep}")
        self.directory = Path(directory).absolute()
        self.save_every = save_every
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(
                f"{self.directory} is a file, not a checkpoint directory; move it away or use a "
                "new --workdir")
        quiet_orbax()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        try:
            # Handlers given up front (not inferred at the first save) so that a fresh process can
            # read a step's metadata before restoring it.
            self._manager = ocp.CheckpointManager(
                self.directory, options=options,
                item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                               META_ITEM: ocp.JsonCheckpointHandler()})
        except Exception as err:
            raise CheckpointError(
                f"cannot open checkpoint directory {self.directory} ({_short_cause(err)})"
            ) from err
        self._closed = False
        self._step_in_flight: int | None = None

    def all_steps(self) -> list[int]:
        """Steps of the finished (and in-flight) checkpoints this run knows, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest checkpoint's step, or None.

        A step directory left half-written by a killed process never counts (orbax lists only
        finalised ones); a save this object started and has not finished does (`restore` waits
        for it).
        """
        return self._manager.latest_step()

    def step_path(self, step: int) -> Path:
        """The directory that holds checkpoint `step` (orbax's default, unpadded step names)."""
        return self.directory / str(step)

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Saves `state` (a pytree of arrays) and `meta` (a JSON-able dict) as checkpoint `step`.

        Without `force` only steps that are multiples of `save_every` are saved; `force` saves
        any step (on SIGTERM, at the end of training). A step that is already saved, or being
        saved, is never overwritten: the call returns False.
        """
        step = int(step)
        if not force and step % self.save_every != 0:
            return False
        if step in self._manager.all_steps():
            return False
        _check_saveable(state, meta)
        # Orbax waits for the previous save anyway; waiting here first reports its failure as
        # that step's, not as this one's.
        self.wait()
        args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                     META_ITEM: ocp.args.JsonSave(meta)})
        try:
            started = bool(self._manager.save(step, args=args, force=True))
        except Exception as err:
            raise self._unsaved(step, f"could not save checkpoint step {step}", err) from err
        if started:
            self._step_in_flight = step
        return started

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Reads checkpoint `step` (None: the latest) into the structure of `abstract_state`.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` or arrays; each array is placed on
        its leaf's sharding, so a run can resume on another device count when shapes match
        (leaves without a sharding go to the first local device). Dtypes follow
        `abstract_state`. Returns `(state, meta)`, `meta` as JSON gives it back (tuples become
        lists). Structure and shapes are compared with the saved tree before any array is read.
        """
        step = self._finished_step(step)
        path = self.step_path(step)
        saved_tree = self._saved_state_tree(step)
        _raise_if_incompatible(saved_tree, abstract_state, path)
        args = ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(_with_default_sharding(abstract_state)),
            META_ITEM: ocp.args.JsonRestore()})
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as err:
            raise self._unreadable(step, _short_cause(err)) from err
        return restored[STATE_ITEM], restored[META_ITEM]

    def restore_params(self, step: int | None, abstract_params: Any) -> Any:
        """Reads only the parameters of checkpoint `step` (None: the latest), into the structure of
        `abstract_params` (the model's `params`, e.g. `jax.eval_shape` of its `init`).

        For evaluation: no optimizer is needed to describe the target, and its state (Adam's two
        moments, twice the parameters' size) is never read. Placement, dtypes and the shape check
        against the saved tree are those of `restore`.
        """
        step = self._finished_step(step)
        path = self.step_path(step)
        saved_params = {PARAMS_KEY: self._saved_state_tree(step).get(PARAMS_KEY, {})}
        target = {PARAMS_KEY: _with_default_sharding(abstract_params)}
        _raise_if_incompatible(saved_params, target, path)
        # The manager's state handler restores whole trees only; the same files read through a
        # PyTree handler can skip every leaf that `target` lacks.
        args = ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)
        try:
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
                restored = reader.restore(path / STATE_ITEM, args=args)
        except Exception as err:
            raise self._unreadable(step, _short_cause(err)) from err
        return restored[PARAMS_KEY]

    def meta(self, step: int) -> dict:
        """The JSON meta of finished checkpoint `step`, without reading any array: what a resume
        checks (the config the run was trained with) before it restores the state."""
        self.wait()
        args = ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})
        try:
            return self._manager.restore(int(step), args=args)[META_ITEM]
        except Exception as err:
            raise self._unreadable(int(step), _short_cause(err)) from err

    def wait(self) -> None:
        """Blocks until every started save is on disk; a failed background save raises here."""
        try:
            self._manager.wait_until_finished()
        except Exception as err:
            raise self._unsaved(self._step_in_flight,
                                f"the background save of checkpoint step {self._step_in_flight}",
                                err) from err

    def close(self) -> None:
        """Waits for pending saves, then releases orbax's threads. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _finished_step(self, step: int | None) -> int:
        """`step`, or the latest finished one for None, once every started save is on disk."""
        self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"no finished checkpoint in {self.directory}")
            return steps[-1]
        if int(step) not in steps:
            raise CheckpointError(
                f"no finished checkpoint for step {step} in {self.directory} "
                f"(finished steps: {steps or 'none'})")
        return int(step)

    def _saved_state_tree(self, step: int) -> Any:
        """The saved state's tree of per-array metadata (`.shape`, `.dtype`), read from disk."""
        path = self.step_path(step)
        try:
            items = self._manager.metadata(step).item_metadata
        except Exception as err:
            raise self._unreadable(step, _short_cause(err)) from err
        item_names = set(items.keys()) if items is not None else set()
        if STATE_ITEM not in item_names and META_ITEM not in item_names:
            contents = sorted(child.name for child in path.iterdir())[:5]
            raise CheckpointError(
                f"{path} is not a crate_jax checkpoint (it holds {contents or 'nothing'}, not "
                f"'{STATE_ITEM}' and '{META_ITEM}'); move it out of {self.directory} or use a "
                "new --workdir")
        for name in (STATE_ITEM, META_ITEM):
            if name not in item_names:
                raise self._unreadable(step, f"its '{name}' item is missing")
        saved = items[STATE_ITEM]
        if saved is None:
            raise self._unreadable(step, f"the '{STATE_ITEM}' item has no array metadata")
        return getattr(saved, "tree", saved)  # TreeMetadata wraps the tree in newer orbax.

    def _unsaved(self, step: int | None, what: str, err: BaseException) -> CheckpointError:
        """The error of a failed save; on a full disk it says so, and which step a rerun resumes
        from (the failed step's files are orbax's temporary ones, which no rerun picks)."""
        full = _disk_full_reason(err)
        if full is None:
            return CheckpointError(f"{what} into {self.directory} failed ({_short_cause(err)}); "
                                   f"{_SAVE_FIX}")
        kept = [saved for saved in self.all_steps() if saved != step]
        resume = (f"the checkpoints up to step {kept[-1]} are kept: free space there (or move "
                  "--workdir to a larger disk), then rerun the same command to resume from step "
                  f"{kept[-1]}" if kept else
                  "no checkpoint was finished before it: free space there (or move --workdir to "
                  "a larger disk), then rerun the same command to start the run")
        return CheckpointError(f"the disk holding {self.directory} is full ({full}): {what} "
                               f"failed; {resume}")

    def _unreadable(self, step: int, cause: str) -> CheckpointError:
        earlier = [s for s in self.all_steps() if s < step]
        fallback = (f"resume from step {earlier[-1]}" if earlier
                    else "start afresh (no earlier checkpoint exists)")
        return CheckpointError(
            f"checkpoint step {step} at {self.step_path(step)} is unreadable ({cause}); delete "
            f"that step directory to {fallback}, or use a new --workdir")


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """`{'params/layer_0/ista/dictionary': (128, 512), ...}` for every leaf of `tree`.

    Keys are the same whether a node is a dict, a list, a tuple, a NamedTuple (optax states) or a
    dataclass, as orbax's saved tree turns the latter into dicts and lists. Leaves are arrays,
    `ShapeDtypeStruct`s, orbax's `ArrayMetadata`/`ScalarMetadata`, or Python scalars (shape ()).
    """
    return {name: tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
            for name, leaf in _named_leaves(tree)}


def _shape_differences(saved: dict[str, tuple], model: dict[str, tuple]) -> list[str]:
    """Human-readable differences between a checkpoint's and a model's `_leaf_shapes`.

    Shortest paths first, so that a parameter is named before its optimizer moments.
    """
    differences = []
    for name in sorted(saved.keys() | model.keys(), key=lambda name: (name.count("/"), name)):
        if name not in model:
            differences.append(f"{name} is in the checkpoint but not in the model")
        elif name not in saved:
            differences.append(f"{name} is in the model but not in the checkpoint")
        elif saved[name] != model[name]:
            differences.append(f"{name} has shape {saved[name]} in the checkpoint but "
                               f"{model[name]} in the model")
    return differences


def _raise_if_incompatible(saved_tree: Any, abstract_state: Any, path: Path) -> None:
    differences = _shape_differences(_leaf_shapes(saved_tree), _leaf_shapes(abstract_state))
    if not differences:
        return
    named = "; ".join(differences[:MAX_NAMED_DIFFERENCES])
    if len(differences) > MAX_NAMED_DIFFERENCES:
        named += f" (and {len(differences) - MAX_NAMED_DIFFERENCES} more differences)"
    raise CheckpointError(
        f"checkpoint at {path} does not match this model: {named}; it was written by a "
        "different config — use a new --workdir or the same config")


def _path_name(key_path: tuple) -> str:
    return "/".join(str(_key_name(key)) for key in key_path)


def _key_name(key: Any) -> Any:
    for attribute in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
        if hasattr(key, attribute):
            return getattr(key, attribute)
    return key


def _with_default_sharding(abstract_state: Any) -> Any:
    """Gives sharding-less `ShapeDtypeStruct` leaves the first local device.

    Without it orbax falls back to the sharding recorded at save time, which names devices the
    restoring process may not have.
    """
    device = jax.local_devices()[0]

    def with_sharding(leaf: Any) -> Any:
        if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                        sharding=jax.sharding.SingleDeviceSharding(device))
        return leaf

    return jax.tree.map(with_sharding, abstract_state)


def _check_saveable(state: Any, meta: dict) -> None:
    """Fails before orbax starts a save that would break in a background thread."""
    for name, leaf in _named_leaves(state):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            raise CheckpointError(
                f"state leaf {name} is a typed PRNG key; save jax.random.key_data(key) instead "
                "and wrap it again with jax.random.wrap_key_data after restoring")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint meta must be JSON-serialisable: {err}") from err


def _named_leaves(tree: Any) -> Iterator[tuple[str, Any]]:
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        yield _path_name(key_path), leaf


def _short_cause(err: BaseException) -> str:
    """The first line of an exception, without tensorstore's spec dump, cut to a readable size.

    A long one keeps both ends: tensorstore names what it was writing first and the operating
    system's reason ("No space left on device") last.
    """
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text.split(" [tensorstore_spec=")[0]
    if len(text) > MAX_CAUSE_CHARS:
        half = MAX_CAUSE_CHARS // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _disk_full_reason(err: BaseException) -> str | None:
    """"No space left on device" or "Disk quota exceeded" when `err`, or an exception it was
    raised from, is one of them; None for any other failure."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for code in _DISK_FULL_ERRNOS:
            if ((isinstance(err, OSError) and err.errno == code)
                    or f"[os_error_code='{code}']" in str(err)):
                return os.strerror(code)
        err = err.__cause__ or err.__context__
    return None
