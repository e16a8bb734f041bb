"""Bring a PyTorch-side model into crate_jax as a run workdir, or send a workdir's model out.

  python -m crate_jax.convert --from=crate-lm --checkpoint=ckpt.pt --workdir=W
  python -m crate_jax.convert --from=hf-gpt2 --checkpoint=gpt2/ --workdir=W [--tokenizer=gpt2/]
  python -m crate_jax.convert --to=crate-lm --workdir=W --checkpoint=out.pt
  python -m crate_jax.convert --to=hf-gpt2 --workdir=W --checkpoint=out_folder/

Formats (crate_jax/convert/formats.py): `crate-lm`, the checkpoint the paper's train.py saves
(its CRATE or its GPT baseline; our other variants too), and `hf-gpt2`, a transformers
GPT2LMHeadModel folder. --tokenizer is a tokenizer.json, or a folder with it or with vocab.json
and merges.txt; without it, a Hugging Face folder's own is used, and a model with GPT-2's
vocabulary gets tiktoken's GPT-2 BPE (data.tokenizer='gpt2'). The workdir then runs every stage:
  python -m crate_jax.main --config=configs/workdir.py:W --workdir=W --config.stages=interp
Needs the `convert` extra: pip install -e '.[convert]'.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

from absl import app, flags, logging

from crate_jax.convert.commands import export_model, import_model
from crate_jax.convert.formats import FORMATS
from crate_jax.convert.tensor_files import ConversionError
from crate_jax.data.tokenizer import TokenizerError
from crate_jax.input_checks import WorkdirError
from crate_jax.model import ConfigError
from crate_jax.train.checkpoints import CheckpointError
from crate_jax.workdir_lock import WorkdirInUse

# Strings, checked by `check_format`: an unknown one is then one FATAL line like any bad input.
_FROM = flags.DEFINE_string("from", None, f"Import a model of this format into --workdir: "
                            f"{' | '.join(FORMATS)}.")
_TO = flags.DEFINE_string("to", None, f"Export --workdir's model in this format: "
                          f"{' | '.join(FORMATS)}.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "The model file (or Hugging Face folder) to import; with --to, the path "
    "to write (a .pt file for crate-lm, a folder for hf-gpt2), which must not exist yet.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The crate_jax run workdir.")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "Import only: tokenizer.json, or a folder with it or with vocab.json and "
    "merges.txt.")
_STEP = flags.DEFINE_integer(
    "step", None, "Import: the training step to file the model under (default: the "
    "checkpoint's own, 0 for Hugging Face). Export: which checkpoint (default: the latest).")
flags.mark_flags_as_required(["checkpoint", "workdir"])

_USER_ERRORS = (ConversionError, CheckpointError, ConfigError, TokenizerError, WorkdirError,
                WorkdirInUse)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # library INFO chatter
    try:
        if (_FROM.value is None) == (_TO.value is None):
            raise ConversionError("give exactly one of --from=<format> (import into --workdir) "
                                  f"and --to=<format> (export it); formats: {', '.join(FORMATS)}")
        if _FROM.value is not None:
            import_model(_FROM.value, Path(_CHECKPOINT.value), Path(_WORKDIR.value),
                         None if _TOKENIZER.value is None else Path(_TOKENIZER.value), _STEP.value)
        else:
            if _TOKENIZER.value is not None:
                raise ConversionError("--tokenizer is for imports; an export takes the "
                                      "workdir's own")
            export_model(_TO.value, Path(_WORKDIR.value), Path(_CHECKPOINT.value), _STEP.value)
    except _USER_ERRORS as error:
        sys.exit(f"FATAL: {error}")
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        sys.exit(f"FATAL: the disk holding {error.filename} is full ({error.strerror}); free "
                 "space and rerun the same command")


if __name__ == "__main__":
    app.run(main)
