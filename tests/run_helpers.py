"""Shared by the end-to-end tests: a fast `tiny` config and workdirs with prepared data."""

import shutil
from pathlib import Path

from configs import crate

REPO = Path(__file__).resolve().parents[1]


def tiny_config(module=crate, **train):
    """The `tiny` preset, trained briefly with small batches so that the suite stays fast."""
    config = module.get_config("tiny")
    defaults = dict(num_steps=40, batch_size=8, seq_len=64, warmup_steps=5, log_every=10,
                    eval_every=20, eval_batches=4, checkpoint_every=20, progress_bar=False)
    config.train.update({**defaults, **train})
    return config


def workdir_with_data(prepared: Path, tmp_path: Path, name: str = "run") -> Path:
    """A fresh workdir holding a copy of the prepared tokenizer and token arrays."""
    workdir = tmp_path / name
    shutil.copytree(prepared / "run" / "data", workdir / "data")
    return workdir


def with_data(config, prepared: Path):
    """`config` pointed at the session's prepared TFDS folder."""
    config.data.data_dir = str(prepared / "tfds")
    return config
