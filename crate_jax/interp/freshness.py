"""`interp/inputs.json`: what the interpretability outputs were computed from, checked on rerun.

The stage resumes from whatever it finds in `interp/`, which is only right while the inputs are
the same: the checkpoint (its step and a hash of its parameters), the tokenizer and data that
turned tokens into the text of the records, the model config, the interp settings that change
what is computed, the rule the records are mined by (`miner.RECORDS_VERSION`) and the rule
detection and fuzzing judge by (`judging.JUDGING_VERSION`). When any
of them differs (or outputs exist without an `inputs.json`) the whole folder is moved aside to
`interp.stale-<N>/`, never deleted, and the stage starts afresh. `inputs.json` is written before
any other output, so the outputs of a crashed run are always described by the file beside them
and resume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from crate_jax.atomic_files import move_aside, write_json_atomically
from crate_jax.interp.activations.miner import RECORDS_VERSION
from crate_jax.interp.explanations.judging import JUDGING_VERSION
from crate_jax.layout import RunLayout
from crate_jax.model import model_identity

# Settings that change only how fast the stage runs or how its summary is presented.
_SPEED_SETTINGS = ("workers", "bootstrap_samples", "retry_failed", "batch_size")
# How the LLM server is reached: the same model and mode answer the same wherever it runs.
_CONNECTION_SETTINGS = ("base_url", "api_key_env", "timeout_s", "max_retries", "max_concurrency")
_HASH_SHOWN = 12  # hex digits of a hash shown in the one-line notice


def params_sha256(params) -> str:
    """sha256 over every leaf in tree order: its path, shape, dtype and bytes."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)} {array.shape} {array.dtype}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def interp_inputs(config, checkpoint_step: int, params, data_manifest: dict) -> dict:
    """The inputs that decide what the stage computes (see the module docstring)."""
    settings = config.interp.to_dict()
    for key in _SPEED_SETTINGS:
        settings.pop(key, None)
    for key in _CONNECTION_SETTINGS:
        settings.get("llm", {}).pop(key, None)
    inputs = {"checkpoint_step": int(checkpoint_step), "params_sha256": params_sha256(params),
              "tokenizer_fingerprint": data_manifest.get("tokenizer_fingerprint"),
              "data_fingerprint": data_manifest.get("fingerprint"),
              "model": model_identity(config.model.to_dict()), "interp": settings,
              "records_version": RECORDS_VERSION, "judging_version": JUDGING_VERSION}
    return json.loads(json.dumps(inputs))  # as it reads back from the file: lists, not tuples


def changed_inputs(stored: dict, current: dict) -> list[str]:
    """`key old -> new` for every (nested, dotted) input that differs."""
    stored, current = _flatten(stored), _flatten(current)
    return [f"{key} {_shown(stored.get(key))} -> {_shown(current.get(key))}"
            for key in sorted(set(stored) | set(current), key=_input_order)
            if stored.get(key) != current.get(key)]


def claim_outputs(layout: RunLayout, inputs: dict, say: Callable[[str], None]) -> None:
    """Makes the run's `interp/` hold outputs of `inputs` only: resumes when its `inputs.json`
    matches, else moves it to the first free `interp.stale-<N>/` (with one line through `say`)."""
    out, path = layout.interp, layout.interp_inputs
    stored = _read_inputs(path)
    if stored == inputs:
        return
    if stored is not None:
        reason = f"inputs changed ({', '.join(changed_inputs(stored, inputs))})"
    elif out.exists() and any(out.iterdir()):
        reason = f"no {path.name} says what {out.name}/ was computed from"
    else:
        reason = None
    if reason is not None:
        stale = move_aside(out, layout.stale_interp)
        say(f"{out.name}: {reason}; moved {out.name}/ to {stale.name}/ and recomputing")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, inputs)


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
