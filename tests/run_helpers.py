"""Shared by the end-to-end tests: a fast `tiny` config and workdirs with prepared data."""

import contextlib
import importlib
import io
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import jax
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


def miniature_study(config, **study):
    """`config` (a study, `configs/ablation.py`) with a budget of seconds per run and the
    `study` settings given."""
    config.train.update(dict(num_steps=10, batch_size=8, seq_len=64, warmup_steps=2,
                             log_every=5, eval_every=10, eval_batches=2, checkpoint_every=10,
                             progress_bar=False))
    config.interp.update(dict(num_sequences=8, seq_len=64, window=16, top_k=4, random_k=4,
                              quantile_bins=2, per_bin=2, neurons_per_layer=8,
                              bootstrap_samples=100))
    config.study.update({"workers": 1, **study})  # in the test's process, unless asked
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


def run_main(workdir: Path, prepared: Path, *overrides: str, devices: int = 1,
             wait: bool = True, config_file: str = "configs/crate.py"):
    """`python -m crate_jax.main` training `config_file`'s tiny model in `workdir` on `devices`
    forced host devices, with small batches (8 windows of 64 tokens, 4 evaluation batches).

    Waits for it (a `CompletedProcess`), or with `wait=False` returns the running `Popen`, its
    output (stdout and stderr together) readable line by line.
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    args = [sys.executable, "-m", "crate_jax.main",
            *run_main_arguments(workdir, prepared, *overrides, config_file=config_file)]
    if not wait:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def run_main_arguments(workdir: Path, prepared: Path, *overrides: str,
                       config_file: str = "configs/crate.py") -> list[str]:
    """The arguments of `crate_jax.main` that `run_main` passes (also to launch/ scripts)."""
    return [f"--config={config_file}", f"--workdir={workdir}",
            f"--config.data.data_dir={prepared / 'tfds'}", "--config.train.batch_size=8",
            "--config.train.seq_len=64", "--config.train.warmup_steps=5",
            "--config.train.eval_batches=4", "--config.train.progress_bar=False",
            "--config.stages=train", *overrides]


# A 3-step run, checkpointed and logged every step: what the sharding and multi-process tests
# compare across device layouts (`three_step_runs` in conftest.py trains each layout once).
THREE_STEPS = 3
THREE_STEP_TRAIN = dict(num_steps=THREE_STEPS, checkpoint_every=1, log_every=1,
                        eval_every=THREE_STEPS)
THREE_STEP_ARGS = [f"--config.train.{key}={value}" for key, value in THREE_STEP_TRAIN.items()]
# layout -> (forced host devices, mesh overrides)
MESH_LAYOUTS = {"one_device": (1, []), "fsdp8": (8, ["--config.mesh.fsdp=8"]),
                "data8": (8, ["--config.mesh.data=8"]),
                "fsdp8_whole_logits": (8, ["--config.mesh.fsdp=8",
                                           "--config.model.head_impl=logits"])}


def train_three_steps(workdir: Path, prepared: Path, variant: str, layout: str) -> str:
    """Trains (or resumes) `variant`'s 3-step run in `workdir` on `layout`; returns its output.

    One device is this process's own (the tests' process has one), which saves a process start;
    the other layouts run `python -m crate_jax.main` on forced host devices.
    """
    devices, mesh = MESH_LAYOUTS[layout]
    if devices == 1 and jax.device_count() == 1:
        from crate_jax.train.loop import train_and_evaluate

        module = importlib.import_module(f"configs.{variant}")
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            summary = train_and_evaluate(
                with_data(tiny_config(module, **THREE_STEP_TRAIN), prepared), workdir)
        assert summary["status"] == "completed", output.getvalue()[-3000:]
        return output.getvalue()
    result = run_main(workdir, prepared, *THREE_STEP_ARGS, *mesh, devices=devices,
                      config_file=f"configs/{variant}.py")
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def checkpoint_params(workdir: Path, step: int, module=crate):
    """The parameters of `workdir`'s checkpoint `step`, of `module`'s tiny model, on one device."""
    from crate_jax.model import abstract_params, model_from_config
    from crate_jax.train.checkpoints import Checkpointer

    abstract = abstract_params(model_from_config(tiny_config(module)).config)
    with Checkpointer(workdir / "checkpoints", save_every=1, keep=None) as checkpointer:
        return checkpointer.restore_params(step, abstract)


def planted_token_arrays(workdir: Path, documents: int):
    """The token arrays of a planted corpus of `documents` documents (word tokenizer, the study's
    128-token vocabulary), prepared in `workdir/data`."""
    from crate_jax.data.token_arrays import prepare_token_arrays

    config = crate.get_config("tiny")
    config.data.update(dict(source=f"planted:{documents}", tokenizer="word"))
    return prepare_token_arrays(config.data, 128, workdir)


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
