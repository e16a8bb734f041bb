"""Run one experiment: `python -m crate_jax.main --config=configs/no_ista.py --workdir=runs/a`.

All logic lives in the stages (`train_and_evaluate(config, workdir)` and those added later), so
tests and notebooks call them directly; this file only parses flags and runs `config.stages`.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from crate_jax.cli import define_config_flag, parse_flags
from crate_jax.data.sources import SourceError
from crate_jax.data.token_arrays import DataPreparationError
from crate_jax.data.tokenizer import TokenizerError
from crate_jax.interp.capture import InterpretabilityError
from crate_jax.interp.evaluate import evaluate_interpretability
from crate_jax.interp.explanation import BackendError
from crate_jax.model import ConfigError
from crate_jax.study import run_study
from crate_jax.train.checkpoints import CheckpointError
from crate_jax.train.loop import TrainingError, train_and_evaluate

_CONFIG = define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every artifact of the run; "
                               "rerunning with the same one resumes.")
flags.mark_flags_as_required(["config", "workdir"])

STAGES = {"train": train_and_evaluate, "interp": evaluate_interpretability, "study": run_study}

# Failures with a message written for the user: printed as one line, no traceback.
_USER_ERRORS = (ConfigError, SourceError, DataPreparationError, TokenizerError, CheckpointError,
                TrainingError, InterpretabilityError, BackendError)


def stage_names(stages: str) -> list[str]:
    names = [name.strip() for name in stages.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        raise ConfigError(f"config.stages={stages!r}: unknown stage(s) {', '.join(unknown)}; "
                          f"available: {', '.join(STAGES)}")
    return names


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # library INFO chatter; progress is printed
    try:
        for stage in stage_names(config.stages):
            STAGES[stage](config, _WORKDIR.value)
    except _USER_ERRORS as error:
        sys.exit(f"FATAL: {error}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
