"""Shared by the end-to-end tests: a fast `tiny` config and workdirs with prepared data."""

import contextlib
import os
import shutil
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from configs import crate

REPO = Path(__file__).resolve().parents[1]


def tiny_config(module=crate, **train):
    """The `tiny` preset, trained briefly with small batches so that the suite stays fast."""
    config = module.get_config("tiny")
    defaults = dict(num_steps=40, batch_size=8, seq_len=64, warmup_steps=5, log_every=10,
                    eval_every=20, eval_batches=4, checkpoint_every=20, progress_bar=False)
    config.train.update({**defaults, **train})
    return config


# The briefly trained run the interp tests share (`trained` in conftest.py), and its checkpoint.
TRAINED_STEPS = 30


def interp_config(prepared: Path, interp: dict, num_steps: int = TRAINED_STEPS):
    """The `tiny` config of the shared trained run (checkpointed at `TRAINED_STEPS`) with the
    interp settings `interp`; a larger `num_steps` trains that run further."""
    config = with_data(tiny_config(num_steps=num_steps, checkpoint_every=TRAINED_STEPS), prepared)
    config.interp.update(interp)
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


def copy_run(trained: Path, tmp_path: Path, name: str) -> Path:
    """A copy of a finished run's workdir, to change without touching the shared original."""
    target = tmp_path / name
    subprocess.run(["cp", "-r", str(trained), str(target)], check=True)
    return target


def data_config(source: str, **overrides) -> types.SimpleNamespace:
    """A `config.data` for `prepare_token_arrays`: a BPE tokenizer, a fifth held out."""
    values = dict(source=source, data_dir="", tokenizer="bpe", val_fraction=0.2)
    return types.SimpleNamespace(**{**values, **overrides})


@contextlib.contextmanager
def raises_user_error(error: type[Exception], match: str) -> Iterator[pytest.ExceptionInfo]:
    """`pytest.raises(error, match=match)` for an error that `python -m crate_jax.main` prints as
    one `FATAL: <message>` line: the in-process form of a CLI error test (one subprocess test in
    test_bad_inputs.py checks that line itself)."""
    from crate_jax.main import _USER_ERRORS

    assert issubclass(error, _USER_ERRORS), f"the CLI would print a traceback for {error}"
    with pytest.raises(error, match=match) as raised:
        yield raised


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[Path]:
    """`directory` (created if missing), made read-only: by its mode, or (for root, who writes
    through modes) by the immutable attribute; skips the test when neither can be set."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield directory
        finally:
            directory.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(directory)], capture_output=True).returncode:
        pytest.skip("running as root without chattr: no directory is read-only to root")
    try:
        yield directory
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)
