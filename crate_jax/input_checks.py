"""Up-front checks of what a user hands a run: the config's values and the workdir.

A value no run can use (`train.grad_accum_steps=0`, `interp.sites` the model lacks, an `llm`
explainer without a model) or a workdir that cannot hold the run would otherwise surface minutes
later, after data preparation or training, as a traceback or as a misleading message. Checked
here first, each ends in one line that names the key, the value and what is allowed.
"""

from __future__ import annotations

import os
import re
import tempfile
import typing
from collections.abc import Callable, Collection
from pathlib import Path

import jax

from crate_jax.data.sources import is_planted
from crate_jax.data.token_arrays import check_data_settings
from crate_jax.interp.evaluate import requested_sites
from crate_jax.interp.explanations.backends import explainer_kinds, make_backend
from crate_jax.interp.explanations.llm_backend import SimulationMode
from crate_jax.interp.explanations.splits import check_record_protocol
from crate_jax.layout import RunLayout
from crate_jax.metrics_file import read_metrics
from crate_jax.model import ConfigError, model_from_config
from crate_jax.train.sharding import mesh_shape

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class WorkdirError(RuntimeError):
    """The workdir cannot hold a run (a file, unwritable, under a file); says which and why."""


# A rule: whether a value is allowed, and the words that say what is.
Rule = tuple[Callable[[object], bool], str]


def _integer(least: int) -> Rule:
    return (lambda value: isinstance(value, int) and not isinstance(value, bool)
            and value >= least), f"an integer >= {least}"


def _number(low: float, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False) -> Rule:
    def allowed(value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        return above and below

    if high is None:
        return allowed, f"a number {'>' if low_open else '>='} {low:g}"
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return allowed, f"in {interval}"


_COUNT = _integer(1)
_SEED = _integer(0)  # numpy's generators refuse negative seeds

_RUN_RULES: dict[str, Rule] = {
    "seed": _SEED,
    "data.val_fraction": _number(0, 1, low_open=True, high_open=True),
    "train.num_steps": _COUNT,
    "train.batch_size": _COUNT,
    "train.grad_accum_steps": _COUNT,
    "train.seq_len": _COUNT,
    "train.learning_rate": _number(0, low_open=True),
    "train.warmup_steps": _integer(0),
    "train.min_learning_rate_ratio": _number(0, 1),
    "train.weight_decay": _number(0),
    "train.b1": _number(0, 1, high_open=True),
    "train.b2": _number(0, 1, high_open=True),
    "train.grad_clip": _number(0, low_open=True),
    "train.log_every": _COUNT,
    "train.eval_every": _COUNT,
    "train.eval_batches": _COUNT,
    "train.checkpoint_every": _COUNT,
    "train.keep_checkpoints": _COUNT,
}

# The bounds of `interp.miner.RecordMiner` and of the scoring that follows it.
_INTERP_RULES: dict[str, Rule] = {
    "interp.num_sequences": _COUNT,
    "interp.neurons_per_layer": _integer(0),  # 0 = every neuron
    "interp.seq_len": _COUNT,
    "interp.batch_size": _COUNT,
    "interp.window": _COUNT,
    "interp.top_k": _integer(0),
    "interp.random_k": _integer(0),
    "interp.quantile_bins": _integer(0),
    "interp.per_bin": _integer(0),
    "interp.eps": _number(0),
    "interp.lookup_tokens": _COUNT,
    "interp.ngram_patterns": _COUNT,
    "interp.ngram_context": _COUNT,
    "interp.token_table_entries": _COUNT,
    "interp.workers": _COUNT,
    "interp.bootstrap_samples": _COUNT,
    "interp.seed": _SEED,
}

_LLM_RULES: dict[str, Rule] = {
    "interp.llm.timeout_s": _number(0, low_open=True),
    "interp.llm.max_retries": _integer(0),
    "interp.llm.max_concurrency": _COUNT,
}


def check_run_config(config, stages: Collection[str]) -> None:
    """Raises `ConfigError` for the first value of `config` that a run of `stages` cannot use
    (`InterpretabilityError` for `interp.sites` the model lacks, as the interp stage does).

    The model, data and training settings are checked for every stage (`interp` restores with
    the training settings); the `interp` section only when that stage runs, and the device
    mesh only when `train` runs (`interp` reads a checkpoint onto whatever devices it has).
    """
    model = model_from_config(config)  # the model section, with "did you mean" for typos
    _check_rules(config, _RUN_RULES)
    check_data_settings(config.data, model.config.vocab_size)
    _check_layout(config)
    if "train" in stages:
        _check_mesh(config, jax.device_count())
    if "interp" in stages:
        _check_interp(config, model)


def _check_layout(config) -> None:
    """The batch must split into micro-batches without remainder."""
    train = config.train
    if train.seq_len > config.model.max_len:
        raise ConfigError(f"train.seq_len={train.seq_len} exceeds model.max_len="
                          f"{config.model.max_len}; lower train.seq_len")
    if train.batch_size % train.grad_accum_steps:
        raise ConfigError(f"train.batch_size={train.batch_size} is not divisible by "
                          f"train.grad_accum_steps={train.grad_accum_steps}")


def _check_mesh(config, device_count: int) -> None:
    """`config.mesh` must lay out exactly the devices of the run, and each micro-batch (of
    training and of evaluation alike) split evenly over all of them, as both mesh axes split it."""
    data, fsdp = mesh_shape(config.mesh, device_count)
    train = config.train
    micro_batch = train.batch_size // train.grad_accum_steps
    if micro_batch % (data * fsdp):
        raise ConfigError(
            f"the micro-batch (train.batch_size / train.grad_accum_steps = {train.batch_size} / "
            f"{train.grad_accum_steps} = {micro_batch}) must be divisible by the {device_count} "
            f"devices of the mesh (mesh.data={data} x mesh.fsdp={fsdp}), which all take an equal "
            "share of it; change train.batch_size or train.grad_accum_steps")


def check_workdir(workdir: str | os.PathLike[str], stages: Collection[str]) -> None:
    """Creates `workdir` if needed and writes a scratch file there, so that a workdir that cannot
    hold the run fails now rather than after data preparation; for `train`, also reads the
    metrics it will append to, so damage is reported before the run (not mid-way).

    An object-store URL (`gs://bucket/run`) is refused: as a local path it would silently become
    the folder `./gs:/bucket/run`, and the run needs a file system (memory-mapped token arrays,
    appended metrics, atomic renames). A bucket mounted with gcsfuse is one.
    """
    scheme = _URL_SCHEME.match(os.fspath(workdir))
    if scheme:
        raise WorkdirError(
            f"--workdir={workdir}: {scheme.group(1)}:// URLs are not supported as a workdir; "
            "mount the bucket as a folder (e.g. gcsfuse BUCKET /mnt/BUCKET) and pass that path")
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir={workdir} is a file, not a directory; give a directory "
                           "(it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise WorkdirError(f"--workdir={workdir} cannot hold the run ({error.strerror}); give a "
                           "directory you can write to") from None
    if "train" not in stages:
        return
    if RunLayout(path).metrics.exists():
        read_metrics(path)
    checkpoints = RunLayout(path).checkpoints
    if checkpoints.is_dir():  # else the first save would fail, after the first interval
        try:
            with tempfile.TemporaryFile(dir=checkpoints):
                pass
        except OSError as error:
            raise WorkdirError(f"{checkpoints} cannot take new checkpoints ({error.strerror}); "
                               "make it writable, or give another --workdir") from None


def _check_interp(config, model) -> None:
    interp = config.interp
    _check_rules(config, _INTERP_RULES)
    if interp.seq_len > config.model.max_len:
        raise ConfigError(f"interp.seq_len={interp.seq_len} exceeds model.max_len="
                          f"{config.model.max_len}; lower interp.seq_len")
    check_record_protocol(interp.protocol, interp.top_k, interp.random_k)
    requested_sites(config, model)
    kinds = explainer_kinds(interp)
    if "llm" in kinds:
        _check_rules(config, _LLM_RULES)
        modes = typing.get_args(SimulationMode)
        if interp.llm.simulator_mode not in modes:
            raise ConfigError(f"interp.llm.simulator_mode={interp.llm.simulator_mode!r} is not "
                              f"one of {', '.join(modes)}")
    if "truth" in kinds and not is_planted(config.data.source):
        raise ConfigError(f"interp.explainer={interp.explainer!r}, interp.compared_explainers="
                          f"{interp.compared_explainers!r}: 'truth' is the planted corpus's "
                          f"control; it needs data.source='planted', not "
                          f"{config.data.source!r}")
    for kind in kinds:  # each one's needs (interp.llm.model), offline; truth's are above
        if kind != "truth":
            make_backend(interp, kind)


def _check_rules(config, rules: dict[str, Rule]) -> None:
    for key, (allowed, description) in rules.items():
        value = config
        for part in key.split("."):
            value = value[part]
        if not allowed(value):
            raise ConfigError(f"{key}={value!r} is out of range: it must be {description}")
