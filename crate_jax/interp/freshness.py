"""`interp/inputs.json`: what the interpretability outputs were computed from, checked on rerun.

The stage resumes from whatever it finds in `interp/`, which is only right while the inputs are
the same: the checkpoint (its step and a hash of its parameters), the tokenizer and data that
turned tokens into the text of the records, the model config, the interp settings that change
what is computed, the rule the records are mined by (`miner.RECORDS_VERSION`) and the rule
detection and fuzzing judge by (`judging.JUDGING_VERSION`). When any
of them differs (or outputs exist without an `inputs.json`) the whole folder is moved aside to
`interp.stale-<N>/`, never deleted, and the stage starts afresh. `inputs.json` is written before
any other output, so the outputs of a crashed run are always described by the file beside them
and resume.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from crate_jax.derived_outputs import claim_folder, params_sha256
from crate_jax.interp.activations.miner import RECORDS_VERSION
from crate_jax.interp.explanations.judging import JUDGING_VERSION
from crate_jax.layout import RunLayout
from crate_jax.model import model_identity

# Settings that change only how fast the stage runs or how its summary is presented.
_SPEED_SETTINGS = ("workers", "bootstrap_samples", "retry_failed", "batch_size")
# How the LLM server is reached: the same model and mode answer the same wherever it runs.
_CONNECTION_SETTINGS = ("base_url", "api_key_env", "timeout_s", "max_retries", "max_concurrency")


def interp_inputs(config, checkpoint_step: int, params, data_manifest: dict,
                  saes: dict | None = None) -> dict:
    """The inputs that decide what the stage computes (see the module docstring); `saes`
    (`{name: TrainedSae}`), whose latents are sites too, by their parameters' hash."""
    settings = config.interp.to_dict()
    for key in _SPEED_SETTINGS:
        settings.pop(key, None)
    for key in _CONNECTION_SETTINGS:
        settings.get("llm", {}).pop(key, None)
    inputs = {"checkpoint_step": int(checkpoint_step), "params_sha256": params_sha256(params),
              "tokenizer_fingerprint": data_manifest.get("tokenizer_fingerprint"),
              "data_fingerprint": data_manifest.get("fingerprint"),
              "model": model_identity(config.model.to_dict()), "interp": settings,
              "records_version": RECORDS_VERSION, "judging_version": JUDGING_VERSION}
    if saes:
        # What maps activations to latents: parameters, input scale, BatchTopK's threshold.
        inputs["saes"] = {name: params_sha256({"params": sae.state.params,
                                               "scale": sae.state.scale,
                                               "threshold": sae.state.threshold})
                          for name, sae in saes.items()}
    return json.loads(json.dumps(inputs))  # as it reads back from the file: lists, not tuples


def claim_outputs(layout: RunLayout, inputs: dict, say: Callable[[str], None]) -> None:
    """Makes the run's `interp/` hold outputs of `inputs` only (`derived_outputs.claim_folder`):
    resumes when its `inputs.json` matches, else moves it to `interp.stale-<N>/`."""
    claim_folder(layout.interp, layout.interp_inputs, layout.stale_interp, inputs, say)
