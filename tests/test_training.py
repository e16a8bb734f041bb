"""Training end to end on the embedded corpus: learning, exact resume, SPMD equivalence, errors."""

import json
import os
import re
import signal
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from run_helpers import (
    checkpoint_params,
    raises_user_error,
    run_main,
    tiny_config,
    with_data,
    workdir_with_data,
)

from configs import crate, gpt2, ista_to_mlp, no_ista, standard_attention
from crate_jax.data.sources import SourceError
from crate_jax.metrics_file import read_metrics
from crate_jax.train.checkpoints import Checkpointer, CheckpointError
from crate_jax.train.loop import TrainingError, train_and_evaluate

VARIANTS = {"crate": crate, "no_ista": no_ista, "standard_attention": standard_attention,
            "ista_to_mlp": ista_to_mlp, "gpt2": gpt2}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_run_of_every_variant_lowers_validation_loss(variant, prepared, tmp_path):
    config = with_data(tiny_config(VARIANTS[variant], num_steps=60, eval_every=60), prepared)
    summary = train_and_evaluate(config, workdir_with_data(prepared, tmp_path))
    assert summary["status"] == "completed" and summary["step"] == 60
    initial, final = summary["initial_validation_loss"], summary["validation_loss"]
    assert abs(initial - np.log(config.model.vocab_size)) < 0.3
    print(f"{variant}: validation loss {initial:.3f} -> {final:.3f}")
    assert final < initial - 1.5, f"{variant}: {initial:.3f} -> {final:.3f}"
    assert 0 < summary["validation_bits_per_byte"] < final / np.log(2)


def test_run_writes_config_versions_metrics_and_checkpoints(prepared, tmp_path):
    workdir = workdir_with_data(prepared, tmp_path)
    train_and_evaluate(with_data(tiny_config(), prepared), workdir)
    assert json.loads((workdir / "config.json").read_text())["model"]["attention"] == "mssa"
    info = json.loads((workdir / "run_info.json").read_text())
    assert info["versions"]["jax"] == jax.__version__
    assert info["data"]["fingerprint"]["num_documents"] > 300
    records = read_metrics(workdir)
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [10, 20, 30, 40]
    assert all(r["tokens_per_second"] > 0 for r in records if r["step"] > 10
               and r["split"] == "train")
    assert [r["step"] for r in records if r["split"] == "validation"] == [0, 20, 40]
    assert sorted(os.listdir(workdir / "tensorboard")) == ["train", "validation"]
    assert Checkpointer(workdir / "checkpoints", save_every=20, keep=3).latest_step() == 40
    again = train_and_evaluate(with_data(tiny_config(), prepared), workdir)  # finished: no-op
    assert again == {"step": 40, "status": "completed"}
    assert read_metrics(workdir) == records


# Checkpoints every 20 steps, a log line and a slow evaluation (64 batches) every 5: a signal sent
# on reading a log line lands inside that evaluation, between the loop's decision not to save
# this step and its next look at the stop flag.
_INTERRUPTIBLE_TRAIN = dict(num_steps=30, checkpoint_every=20, log_every=5, eval_every=5,
                            eval_batches=64)
_INTERRUPTIBLE = [f"--config.train.{key}={value}" for key, value in _INTERRUPTIBLE_TRAIN.items()]


def _interruptible_config(prepared: Path):
    """`_INTERRUPTIBLE`'s run as a config, for the runs that need no signal of their own: trained
    in this process, they skip a process start (the interrupted runs themselves are real
    `python -m crate_jax.main` processes, and a resumption under other settings is refused)."""
    return with_data(tiny_config(**_INTERRUPTIBLE_TRAIN), prepared)


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
    """The run every interrupted one must reproduce exactly once resumed."""
    workdir = workdir_with_data(prepared, tmp_path_factory.mktemp("uninterrupted"))
    summary = train_and_evaluate(_interruptible_config(prepared), workdir)
    assert summary["status"] == "completed" and summary["step"] == 30, summary
    return workdir


def _interrupt_after_log_line(workdir: Path, prepared: Path, step: int, signum: int,
                              *overrides: str) -> tuple[int, str]:
    """Starts a run, sends `signum` as soon as it prints step `step`'s log line; returns its
    exit code and output."""
    process = run_main(workdir, prepared, *_INTERRUPTIBLE, *overrides, wait=False)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(f"step {step} | loss"):
            process.send_signal(signum)
            break
    output, _ = process.communicate(timeout=120)
    return process.returncode, "".join(seen) + output


def _assert_resumes_to(uninterrupted: Path, workdir: Path, prepared: Path, capsys, *,
                       from_checkpoint: bool = True) -> None:
    """The rerun (in this process: see `_interruptible_config`) ends where the uninterrupted run
    did, with its parameters and its metrics file: the same records, no more, no fewer."""
    earlier = capsys.readouterr().out
    summary = train_and_evaluate(_interruptible_config(prepared), workdir)
    resumed_output = capsys.readouterr().out
    print(earlier + resumed_output, end="")  # still shown with a failure
    assert summary["status"] == "completed" and summary["step"] == 30, summary
    assert ("step 0 |" not in resumed_output) == from_checkpoint, \
        f"expected {'a resumption' if from_checkpoint else 'a fresh start'}:\n{resumed_output}"
    for left, right in zip(jax.tree_util.tree_leaves(checkpoint_params(uninterrupted, 30)),
                           jax.tree_util.tree_leaves(checkpoint_params(workdir, 30)), strict=True):
        np.testing.assert_allclose(left, right, rtol=1e-6, atol=1e-7)
    curve = {(r["split"], r["step"]): r["loss"] for r in read_metrics(uninterrupted)}
    resumed_records = read_metrics(workdir)
    resumed_curve = {(r["split"], r["step"]): r["loss"] for r in resumed_records}
    assert len(resumed_curve) == len(resumed_records), "no step is logged twice"
    assert set(resumed_curve) == set(curve)
    for key, loss in curve.items():
        assert resumed_curve[key] == pytest.approx(loss, rel=1e-6), key


def test_sigterm_saves_the_reported_step_stops_the_stages_and_resumes_exactly(
        prepared, tmp_path, uninterrupted, capsys):
    workdir = workdir_with_data(prepared, tmp_path)
    code, output = _interrupt_after_log_line(workdir, prepared, 5, signal.SIGTERM,
                                             "--config.stages=train,interp")
    assert code == 128 + signal.SIGTERM, output
    assert "stopped by signal at step" in output, output
    stopped_at = int(re.search(r"stopped by signal at step (\d+) ", output).group(1))
    assert 5 <= stopped_at < 20
    assert Checkpointer(workdir / "checkpoints", save_every=20).latest_step() == stopped_at
    assert "train: interrupted; not run: interp" in output
    assert not (workdir / "interp").exists()  # no evaluation of a half-trained model
    _assert_resumes_to(uninterrupted, workdir, prepared, capsys)


def test_kill_at_a_random_step_then_rerun_equals_the_uninterrupted_run(
        prepared, tmp_path, uninterrupted, capsys):
    step = int(np.random.default_rng().choice([5, 10, 15, 20, 25]))
    print(f"killed after step {step}'s log line")
    workdir = workdir_with_data(prepared, tmp_path)
    code, output = _interrupt_after_log_line(workdir, prepared, step, signal.SIGKILL)
    assert code == -signal.SIGKILL, output
    # Without a finished checkpoint (the first is step 20's) the rerun starts over.
    saved = Checkpointer(workdir / "checkpoints", save_every=20).latest_step()
    _assert_resumes_to(uninterrupted, workdir, prepared, capsys,
                       from_checkpoint=saved is not None)


def test_gradient_accumulation_matches_the_whole_batch(prepared, tmp_path):
    whole = train_and_evaluate(with_data(tiny_config(num_steps=3, log_every=1), prepared),
                               workdir_with_data(prepared, tmp_path, "whole"))
    accumulated = train_and_evaluate(
        with_data(tiny_config(num_steps=3, log_every=1, grad_accum_steps=4), prepared),
        workdir_with_data(prepared, tmp_path, "accumulated"))
    assert accumulated["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)
    assert accumulated["validation_loss"] == pytest.approx(whole["validation_loss"], rel=1e-5)


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(prepared, tmp_path, capsys):
    workdir = workdir_with_data(prepared, tmp_path)
    config = with_data(tiny_config(num_steps=20, checkpoint_every=5, log_every=5), prepared)
    train_and_evaluate(config, workdir)
    config.train.num_steps = 40
    config.train.learning_rate = 1e30  # the resumed steps blow the parameters up
    config.train.warmup_steps = 0
    with pytest.raises(TrainingError, match=r"training diverged: loss is nan at step 2\d; the "
                                            r"last good checkpoint \(step 20\) is kept"):
        train_and_evaluate(config, workdir)
    # As the message advises, the resumption runs with other optimizer settings, and says so.
    assert "resuming step 20 with changed optimizer settings: train.learning_rate: 0.003 " \
        "there, 1e+30 now; train.warmup_steps: 5 there, 0 now" in capsys.readouterr().out
    assert Checkpointer(workdir / "checkpoints", save_every=5, keep=3).latest_step() == 20


def test_bad_data_sources_are_errors_naming_the_source(prepared, tmp_path):
    config = with_data(tiny_config(), prepared)
    config.data.source = "text:/nonexistent/*.txt"
    with raises_user_error(SourceError, re.escape("no files match 'text:/nonexistent/*.txt'")):
        train_and_evaluate(config, tmp_path / "a")

    started = time.time()
    config.data.source = "tfds:lm1b"
    with raises_user_error(SourceError, "tfds:lm1b is not prepared"):
        train_and_evaluate(config, tmp_path / "b")
    assert time.time() - started < 60


def test_corrupt_checkpoint_is_a_clear_error_and_is_left_in_place(prepared, tmp_path):
    workdir = workdir_with_data(prepared, tmp_path)
    train_and_evaluate(with_data(tiny_config(num_steps=5, checkpoint_every=5), prepared), workdir)
    step_dir = workdir / "checkpoints" / "5"
    data_files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert data_files
    for path in data_files:
        path.write_bytes(b"garbage" * 10)
    with raises_user_error(CheckpointError, "checkpoint step 5"):
        train_and_evaluate(with_data(tiny_config(num_steps=10, checkpoint_every=5), prepared),
                           workdir)
    assert all(path.exists() for path in data_files)


def test_a_different_model_in_the_same_workdir_is_refused(prepared, tmp_path):
    workdir = workdir_with_data(prepared, tmp_path)
    train_and_evaluate(with_data(tiny_config(num_steps=5, checkpoint_every=5), prepared), workdir)
    record = {name: (workdir / name).read_text() for name in ("config.json", "run_info.json")}

    def refused(changes: dict, differences: str) -> None:
        config = with_data(tiny_config(num_steps=10, checkpoint_every=5), prepared)
        config.update_from_flattened_dict(changes)
        with raises_user_error(CheckpointError,
                               re.escape(f"trained with other settings ({differences})")):
            train_and_evaluate(config, workdir)

    refused({"model.ista_steps": 3}, "model.ista_steps: 2 there, 3 now")
    # Another attention has other arrays: still named by the setting, not by a list of arrays.
    refused({"model.attention": "mhsa"}, "model.attention: 'mssa' there, 'mhsa' now")
    refused({"seed": 1, "train.batch_size": 16},
            "seed: 0 there, 1 now; train.batch_size: 8 there, 16 now")
    # The refused runs leave the workdir's own record of what it is untouched.
    assert record == {name: (workdir / name).read_text() for name in record}
