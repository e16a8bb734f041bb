"""Outputs derived from a checkpoint, tied to what they were computed from.

A stage that resumes from what it finds on disk (`interp/`, `sae/<site>/`) is right only while
its inputs are the same. Each such folder holds an inputs file written before any other output;
`claim_folder` compares it with the current inputs and, when anything differs (or outputs exist
without one), moves the whole folder aside to `<name>.stale-<N>`, never deleting it, and starts
afresh. The outputs of a crashed run are therefore always described by the file beside them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from crate_jax.atomic_files import move_aside, write_json_atomically

_HASH_SHOWN = 12  # hex digits of a hash shown in the one-line notice


def params_sha256(params) -> str:
    """sha256 over every leaf in tree order: its path, shape, dtype and bytes."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)} {array.shape} {array.dtype}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def claim_folder(folder: Path, inputs_path: Path, stale: Callable[[int], Path], inputs: dict,
                 say: Callable[[str], None]) -> None:
    """Makes `folder` hold outputs of `inputs` only: resumes when `inputs_path` (inside it)
    matches, else moves the folder to the first free `stale(N)` (with one line through `say`)
    and starts it afresh with `inputs` written first."""
    stored = _read_inputs(inputs_path)
    if stored == inputs:
        return
    if stored is not None:
        reason = f"inputs changed ({', '.join(changed_inputs(stored, inputs))})"
    elif folder.exists() and any(folder.iterdir()):
        reason = f"no {inputs_path.name} says what {folder.name}/ was computed from"
    else:
        reason = None
    if reason is not None:
        moved = move_aside(folder, stale)
        say(f"{folder.name}: {reason}; moved {folder.name}/ to {moved.name}/ and recomputing")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomically(inputs_path, inputs)


def changed_inputs(stored: dict, current: dict) -> list[str]:
    """`key old -> new` for every (nested, dotted) input that differs."""
    stored, current = _flatten(stored), _flatten(current)
    return [f"{key} {_shown(stored.get(key))} -> {_shown(current.get(key))}"
            for key in sorted(set(stored) | set(current), key=_input_order)
            if stored.get(key) != current.get(key)]


def _read_inputs(path: Path) -> dict | None:
    """The stored inputs; None where there are none (or none readable: then nothing is known)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _flatten(value: dict, prefix: str = "") -> dict:
    flat = {}
    for key, item in value.items():
        if isinstance(item, dict):
            flat.update(_flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def _input_order(key: str) -> tuple[int, str]:
    """The checkpoint first, then data, then settings: the likeliest cause reads first."""
    order = ("checkpoint_step", "params_sha256", "tokenizer_fingerprint", "data_fingerprint")
    return (order.index(key) if key in order else len(order), key)


def _shown(value) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef"
                                                          for c in value):
        return value[:_HASH_SHOWN]
    return "(none)" if value is None else json.dumps(value)
