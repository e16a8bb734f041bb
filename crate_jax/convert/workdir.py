"""An imported model as an ordinary crate_jax run workdir, and a workdir's model read back.

`write_converted_run` lays down what training would have left: the tokenizer
(`data/tokenizer.json`), an orbax checkpoint at the model's step (its parameters, fresh
optimizer moments, the config in its metadata) and `config.json`, so every stage runs on it
unchanged; fine-tuning continues from that step. `conversion.json`, written last, says where the
model came from (file, sha256, format) and means "complete": a rerun of the same conversion finds
it and stops, another model into the same workdir is refused, never mixed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from crate_jax.atomic_files import write_json_atomically, write_text_atomically
from crate_jax.convert.formats import ImportedModel
from crate_jax.convert.tensor_files import ConversionError
from crate_jax.data.tokenizer import SavedTokenizer
from crate_jax.layout import RunLayout
from crate_jax.model import ModelConfig, abstract_params
from crate_jax.train.checkpoints import Checkpointer
from crate_jax.train.optimizer import make_optimizer
from crate_jax.train.state import state_from_params
from crate_jax.versions import package_versions

# The config file of each (attention, sparse block), whose other settings a converted run takes.
VARIANT_CONFIGS = {("mssa", "ista"): "crate", ("mhsa", "mlp"): "gpt2", ("mssa", "none"): "no_ista",
                   ("mhsa", "ista"): "standard_attention", ("mssa", "mlp"): "ista_to_mlp"}
# What identifies a conversion: the same inputs give the same workdir.
_IDENTITY_KEYS = ("format", "source_sha256", "tokenizer_sha256", "requested_step")


def converted_config(settings: ModelConfig, tokenizer_kind: str) -> ml_collections.ConfigDict:
    """The run config of an imported model: its variant's config file, at the paper's sizes
    (`b`) for a model as wide as the paper's and `tiny` below, with the model's settings, its
    tokenizer, and sequence lengths that fit its context."""
    variant = VARIANT_CONFIGS.get((settings.attention, settings.sparse_block), "crate")
    preset = "b" if settings.embed_dim >= 768 else "tiny"
    config = importlib.import_module(f"configs.{variant}").get_config(preset)
    if (settings.attention, settings.sparse_block) not in VARIANT_CONFIGS:
        config.variant = f"{settings.attention}_{settings.sparse_block}"
    config.size = "imported"
    config.model.update(dataclasses.asdict(settings))
    config.data.tokenizer = tokenizer_kind
    config.train.seq_len = min(config.train.seq_len, settings.max_len)
    config.interp.seq_len = min(config.interp.seq_len, settings.max_len)
    config.interp.window = min(config.interp.window, config.interp.seq_len)
    return config


def file_digest(paths: list[Path]) -> str:
    """sha256 over the files' bytes, in order: what a conversion was made from."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as file:
            while chunk := file.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def check_convertible_workdir(workdir: Path, identity: dict) -> bool:
    """True when `workdir` holds this very conversion (`identity`: `_IDENTITY_KEYS`) already;
    False when it can take it. Refused before any work: another conversion, or another run's
    checkpoints or token arrays (a trained run), so nothing there is overwritten."""
    layout = RunLayout(workdir)
    if layout.conversion.exists():
        previous = json.loads(layout.conversion.read_text(encoding="utf-8"))
        if _identity(previous) == _identity(identity):
            return True
        raise ConversionError(
            f"--workdir={workdir} holds another conversion ({previous.get('source')}, format "
            f"{previous.get('format')}, step {previous.get('step')}); convert into a new "
            "--workdir")
    held = [path for path in (layout.data.manifest, layout.metrics) if path.exists()]
    if layout.checkpoints.is_dir() and any(layout.checkpoints.iterdir()):
        held.append(layout.checkpoints)
    if held and not _unfinished_conversion(layout):
        raise ConversionError(f"--workdir={workdir} already holds a run ({held[0]}); convert "
                              "into a new --workdir")
    return False


def _unfinished_conversion(layout: RunLayout) -> bool:
    """Only a checkpoint that an interrupted conversion saved (its metadata says so)."""
    if layout.data.manifest.exists() or layout.metrics.exists():
        return False
    with Checkpointer(layout.checkpoints, save_every=1, keep=None) as checkpointer:
        steps = checkpointer.all_steps()
        return len(steps) == 1 and "conversion" in checkpointer.meta(steps[0])


def write_converted_run(workdir: Path, imported: ImportedModel, tokenizer: SavedTokenizer | None,
                        tokenizer_kind: str, record: dict) -> None:
    """Writes the workdir (module docstring), once `check_convertible_workdir` let it. `record`
    is `conversion.json` (it must have `_IDENTITY_KEYS`)."""
    layout = RunLayout(workdir)
    config = converted_config(imported.settings, tokenizer_kind)
    if tokenizer is not None:
        layout.data_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(layout.data.tokenizer)
    with Checkpointer(layout.checkpoints, save_every=1, keep=None) as checkpointer:
        saved = checkpointer.all_steps()
        if saved and _identity(checkpointer.meta(saved[0]).get("conversion", {})) \
                != _identity(record):
            raise ConversionError(f"{layout.checkpoints} holds an unfinished conversion of "
                                  "another model; convert into a new --workdir")
        if not saved:
            params = jax.tree_util.tree_map(jnp.asarray, imported.params)
            state = state_from_params(params, make_optimizer(config.train), config.seed,
                                      imported.step)
            meta = {"config": config.to_dict(), "sampler_step": imported.step,
                    "data_fingerprint": None, "versions": package_versions(),
                    "conversion": record}
            checkpointer.save(imported.step, state.as_dict(), meta, force=True)
    write_text_atomically(layout.config, config.to_json(indent=2, sort_keys=True))
    write_json_atomically(layout.conversion, record)  # last: the conversion is complete


def _identity(record: dict) -> dict:
    return {key: record.get(key) for key in _IDENTITY_KEYS}


@dataclasses.dataclass(frozen=True)
class RunModel:
    """A workdir's model as an export reads it: settings, parameters (NumPy), step, config."""

    settings: ModelConfig
    params: dict
    step: int
    config: ml_collections.ConfigDict


def read_run_model(workdir: Path, step: int | None = None) -> RunModel:
    """The model of `workdir`'s `config.json` at checkpoint `step` (None: the latest)."""
    layout = RunLayout(workdir)
    try:
        config = ml_collections.ConfigDict(json.loads(layout.config.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ConversionError(f"--workdir={workdir} holds no run ({layout.config} is missing)"
                              ) from None
    except (OSError, ValueError) as error:
        raise ConversionError(f"cannot read {layout.config} ({error})") from None
    settings = ModelConfig.from_mapping(config.model)
    if not layout.checkpoints.is_dir():
        raise ConversionError(f"--workdir={workdir} has no checkpoint ({layout.checkpoints} is "
                              "missing)")
    with Checkpointer(layout.checkpoints, save_every=1, keep=None) as checkpointer:
        steps = checkpointer.all_steps()
        if not steps:
            raise ConversionError(f"no finished checkpoint in {layout.checkpoints}")
        if step is not None and step not in steps:
            raise ConversionError(f"--step={step}: {layout.checkpoints} holds steps "
                                  f"{', '.join(map(str, steps))}")
        chosen = steps[-1] if step is None else step
        params = checkpointer.restore_params(chosen, abstract_params(settings))
    params = jax.tree_util.tree_map(lambda leaf: np.asarray(jax.device_get(leaf)), params)
    return RunModel(settings, params, chosen, config)
