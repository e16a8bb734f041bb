"""Up-front checks of what a user hands a run, composed for the stages it runs: each stage's
config checks (`train.config_checks`, `interp.config_checks`) and the workdir's.

A value no run can use (`train.grad_accum_steps=0`, `interp.sites` the model lacks, an `llm`
explainer without a model) or a workdir that cannot hold the run would otherwise surface minutes
later, after data preparation or training, as a traceback or as a misleading message. Checked
here first, each ends in one line that names the key, the value and what is allowed.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Collection
from pathlib import Path

from crate_jax.interp.config_checks import check_interp_config
from crate_jax.layout import RunLayout
from crate_jax.metrics_file import read_metrics
from crate_jax.sae.stage import check_sae_config
from crate_jax.train.config_checks import check_train_config

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class WorkdirError(RuntimeError):
    """The workdir cannot hold a run (a file, unwritable, under a file); says which and why."""


def check_run_config(config, stages: Collection[str]) -> None:
    """Raises `ConfigError` for the first value of `config` that a run of `stages` cannot use
    (`InterpretabilityError` for `interp.sites` the model lacks, as the interp stage does).

    The model, data and training settings are checked for every stage (`interp` restores with
    the training settings); the `interp` section only when that stage runs, and the device
    mesh only when `train` runs (`interp` reads a checkpoint onto whatever devices it has).
    """
    model = check_train_config(config, mesh="train" in stages or "sae" in stages)
    if "interp" in stages:
        check_interp_config(config, model)
    if "sae" in stages:
        check_sae_config(config, model)


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
