"""Train a CRATE-family language model and explain its neurons, or run an ablation study.

  python -m crate_jax.main --config=configs/crate.py --workdir=runs/crate
  python -m crate_jax.main --config=configs/crate.py:2l --workdir=runs/crate_2l \\
      --config.train.num_steps=100 --config.stages=train,interp

--config names a config file (configs/<variant>.py), optionally with a size preset after a colon
(configs/crate.py:2l); --config.<key>=<value> overrides any of its keys. --config.stages lists
the stages to run, in order (comma-separated):
  train   train the model in --workdir, or resume it from its last checkpoint
  interp  explain and score the neurons of the trained model (needs 'train' first)
  sae     train sparse autoencoders on the trained model's activations at config.sae.sites
          and evaluate them (needs 'train' first)
  study   train and score every variant and seed of a study (configs/ablation.py), then report
Rerunning the same command resumes where it stopped.

A multi-process job (TPU pod slice, SLURM, N local processes: see launch/) runs the same command
on every process; it joins the job from --coordinator_address/--num_processes/--process_id, the
JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID variables, or the cluster JAX detects
(crate_jax/distributed.py). Such a job trains (--config.stages=train); interp then runs on one
machine with the same --workdir.
"""

# All logic lives in the stages (`train_and_evaluate(config, workdir)` and the others), so tests
# and notebooks call them directly; this file only parses flags and runs `config.stages`.

from __future__ import annotations

import contextlib
import errno
import signal
import sys

import jax
from absl import app, flags, logging

from crate_jax.cli import CONFIG_FLAG, define_config_flag, parse_flags
from crate_jax.data.sources import SourceError
from crate_jax.data.token_arrays import DataPreparationError
from crate_jax.data.tokenizer import TokenizerError
from crate_jax.distributed import DistributedError, job_spec, join
from crate_jax.input_checks import WorkdirError, check_run_config, check_workdir
from crate_jax.interp.activations.capture import InterpretabilityError
from crate_jax.interp.evaluate import evaluate_interpretability
from crate_jax.interp.explanations.explanation import BackendError
from crate_jax.metrics_file import MetricsError
from crate_jax.model import ConfigError
from crate_jax.sae.stage import SaeError, fit_saes
from crate_jax.study import run_configs, run_study
from crate_jax.study_workers import WorkerDied
from crate_jax.train.checkpoints import CheckpointError
from crate_jax.train.loop import TrainingError, train_and_evaluate
from crate_jax.workdir_lock import WorkdirInUse, hold_workdir

_CONFIG = define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every artifact of the run "
                               "(data, checkpoints, metrics, interp results); rerunning with the "
                               "same one resumes.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process jobs: HOST:PORT of process 0's coordinator (with "
    "--num_processes and --process_id); unset, the JAX_* variables or the cluster decide.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Multi-process jobs: how many processes the job has.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "Multi-process jobs: this process's index, 0..num_processes-1.")
flags.mark_flags_as_required([CONFIG_FLAG, "workdir"])
# Defined in crate_jax.cli; declared a key flag here so that --help, not only --helpfull, shows it.
flags.declare_key_flag(CONFIG_FLAG)

STAGES = {"train": train_and_evaluate, "interp": evaluate_interpretability, "sae": fit_saes,
          "study": run_study}

# Failures with a message written for the user: printed as one line, no traceback.
_USER_ERRORS = (ConfigError, SourceError, DataPreparationError, TokenizerError, CheckpointError,
                TrainingError, InterpretabilityError, BackendError, MetricsError, WorkdirError,
                DistributedError, WorkdirInUse, SaeError, WorkerDied)


def stage_names(stages: str) -> list[str]:
    names = [name.strip() for name in stages.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        raise ConfigError(f"config.stages={stages!r}: unknown stage(s) {', '.join(unknown)}; "
                          f"available: {', '.join(STAGES)}")
    return names


def check_before_any_work(config, workdir: str, stages: list[str]) -> None:
    """Every input up front, so that a bad one costs one line, not a half-done run: the config as
    a run, each run of a study, then the workdir (created only once the config passed)."""
    check_run_config(config, stages)
    if jax.process_count() > 1 and set(stages) != {"train"}:
        raise ConfigError(
            f"config.stages={','.join(stages)}: a {jax.process_count()}-process job runs only "
            "the train stage; run it with --config.stages=train, then the rest on one machine "
            "with the same --workdir (e.g. --config.stages=interp)")
    if "study" in stages:
        run_configs(config)
    check_workdir(workdir, stages)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # library INFO chatter; progress is printed
    try:
        joined = join(job_spec(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value))
        if joined:
            print(joined, flush=True)
        names = stage_names(config.stages)
        check_before_any_work(config, _WORKDIR.value, names)
        # One writer per workdir, for the whole run (in a job: the job, through process 0).
        with hold_workdir(_WORKDIR.value, enabled=jax.process_index() == 0), \
                _stopped_by_signals(enabled=jax.process_count() == 1) as stopped:
            for position, stage in enumerate(names):
                stopped.stage, stopped.skipped = stage, names[position + 1:]
                result = STAGES[stage](config, _WORKDIR.value)
                if isinstance(result, dict) and result.get("status") == "interrupted":
                    _exit_interrupted(stage, names[position + 1:], result.get("signal"))
    except _USER_ERRORS as error:
        sys.exit(f"FATAL: {error}")
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        sys.exit(_disk_full_message(error, _WORKDIR.value))
    except _StopRequested as stop:
        _exit_interrupted(stop.where.stage, stop.where.skipped, stop.signum)


def _disk_full_message(error: OSError, workdir: str) -> str:
    """A full disk or quota in any stage (data preparation, interp, the report): one line, as
    for a bad input. Finished work is whole on disk: files are written under a temporary name
    and renamed, per-neuron lines a stopped write cut are redone, and checkpoints (whose own
    full disk is a `CheckpointError`) are waited for when the stage unwinds."""
    where = error.filename or workdir
    return (f"FATAL: the disk holding {where} is full ({error.strerror}); finished work is "
            "kept: free space there (or move --workdir to a larger disk), then rerun the same "
            "command to resume")


class _StopRequested(BaseException):
    """SIGTERM or SIGINT outside the training loop (data preparation, interp, a study's
    report): raised where the process is, so that the stage ends at once. Finished work is on
    disk already (atomic writes, per-neuron appends), as it would be after kill -9."""

    def __init__(self, signum: int, where: _Stage):
        super().__init__(signum)
        self.signum, self.where = signum, where


class _Stage:
    """Which stage is running, and which would follow: what the stop line names."""

    stage = ""
    skipped: list[str] = []


@contextlib.contextmanager
def _stopped_by_signals(enabled: bool):
    """SIGTERM and SIGINT end any stage with one line and 128 + the signal's number (the
    training loop installs its own handlers while it runs: it saves a checkpoint first). Off in
    a multi-process job, whose SIGTERM belongs to JAX's preemption notifier."""
    where = _Stage()
    if not enabled:
        yield where
        return

    def stop(signum, frame):
        raise _StopRequested(signum, where)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield where
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_interrupted(stage: str, skipped: list[str], signum: int | None) -> None:
    """A stage stopped by a signal saved its work; the stages after it must not run on that
    partial result (an interp of a half-trained model would be kept and relabelled later).
    Exits as a process killed by that signal would (128 + its number), so a scheduler or a
    shell loop sees that the run did not finish."""
    not_run = f"; not run: {', '.join(skipped)}" if skipped else ""
    print(f"{stage}: interrupted{not_run}; finished work is kept, rerun the same command to "
          "resume", flush=True)
    sys.exit(128 + (signum or signal.SIGTERM))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
