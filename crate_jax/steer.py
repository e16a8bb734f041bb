"""Continue a prompt with one neuron of a trained run steered, beside the unsteered continuation.

  python -m crate_jax.steer --workdir=runs/crate --prompt="The cat" --neuron=ista:1:137 --value=5

--neuron is site:layer:index (sites: ista, mlp, attn, resid, as the model has them); --value
sets the neuron, --factor scales it instead, from --from_position (absolute, counting the
prompt's tokens from 0) on. Both continuations use the same --seed, so they differ only by the
steering. If the run's interp stage explained and scored the neuron, its explanation is shown.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from crate_jax.data.tokenizer import TokenizerError
from crate_jax.generation import NeuronSteer, steer_report
from crate_jax.input_checks import WorkdirError
from crate_jax.interp.activations.capture import InterpretabilityError
from crate_jax.model import ConfigError
from crate_jax.train.checkpoints import CheckpointError

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's workdir (crate_jax.main).")
_PROMPT = flags.DEFINE_string("prompt", None, "The text to continue.")
_NEURON = flags.DEFINE_string("neuron", None, "site:layer:index of the neuron, e.g. ista:1:137.")
_VALUE = flags.DEFINE_float("value", None, "Set the neuron to this value (or give --factor).")
_FACTOR = flags.DEFINE_float("factor", None, "Scale the neuron by this factor (or give --value).")
_FROM = flags.DEFINE_integer("from_position", 0, "Steer from this absolute position on.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 40, "How many tokens to generate at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1.0: off).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed, the same for both continuations.")
flags.mark_flags_as_required(["workdir", "prompt", "neuron"])

_USER_ERRORS = (ConfigError, TokenizerError, CheckpointError, WorkdirError,
                InterpretabilityError)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        steer = NeuronSteer.parse(_NEURON.value, value=_VALUE.value, factor=_FACTOR.value,
                                  from_position=_FROM.value)
        print(steer_report(_WORKDIR.value, _PROMPT.value, steer,
                           max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value,
                           top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value), flush=True)
    except _USER_ERRORS as error:
        sys.exit(f"FATAL: {error}")


if __name__ == "__main__":
    app.run(main)
