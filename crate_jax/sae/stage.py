"""`fit_saes(config, workdir)`: the `sae` stage. For each SAE of `sae.sites` (`sites`: a name
and the site it reads), one SAE per layer of the run's trained model, trained on its training
text (`train.py`), evaluated on held-out text (`evaluate.py`), all under `sae/<name>/`.

A rerun resumes from the SAE's last checkpoint, as long as `sae/<name>/inputs.json` says it
was trained from the same inputs (the model checkpoint and its parameters' hash, the data, the
SAE settings); otherwise the folder is moved aside and the SAEs are trained afresh.
`evaluation.json`, written last, means the SAE is done.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import numpy as np

from crate_jax.atomic_files import write_json_atomically
from crate_jax.config_rules import COUNT, SEED, Rule, check_rules, integer, number
from crate_jax.data.sampler import WindowSampler, evaluation_windows
from crate_jax.data.token_arrays import prepare_token_arrays
from crate_jax.derived_outputs import claim_folder, params_sha256
from crate_jax.layout import RunLayout, SaeLayout
from crate_jax.model import (
    ConfigError,
    abstract_params,
    model_from_config,
    model_identity,
    neuron_sites,
    neuron_width,
)
from crate_jax.sae.evaluate import evaluate_site
from crate_jax.sae.model import SAE_KINDS, SaeSettings
from crate_jax.sae.sites import check_per_site_names, configured_saes, site_overrides
from crate_jax.sae.train import (
    SaeState,
    abstract_state,
    activation_sharding,
    initial_state,
    make_sae_step,
    make_site_capture,
    sae_optimizer,
    stream_batch,
)
from crate_jax.train.checkpoints import Checkpointer, CheckpointError
from crate_jax.train.metrics import MetricsWriter
from crate_jax.train.sharding import batch_sharding, global_batch, make_mesh
from crate_jax.versions import package_versions


class SaeError(RuntimeError):
    """SAE training that cannot go on (a diverged loss); says what to change."""


SAE_RULES: dict[str, Rule] = {
    "sae.expansion": COUNT,
    "sae.k": COUNT,
    "sae.l1_coefficient": number(0),
    "sae.aux_k": integer(0),
    "sae.dead_after_tokens": COUNT,
    "sae.num_steps": COUNT,
    "sae.batch_size": COUNT,
    "sae.seq_len": COUNT,
    "sae.learning_rate": number(0, low_open=True),
    "sae.log_every": COUNT,
    "sae.checkpoint_every": COUNT,
    "sae.eval_sequences": COUNT,
    "sae.seed": SEED,
}
# The windows the SAEs are initialised from: a step no training run reaches.
_INITIALISATION_STEP = 2**31 - 1


def sae_sites(config, model_config) -> dict[str, str]:
    """`{name: site}` of `sae.sites` (`sites.configured_saes`), checked against the model."""
    saes = configured_saes(config)
    available = neuron_sites(model_config)
    missing = sorted({base for base in saes.values() if base not in available})
    if missing:
        raise ConfigError(f"sae.sites={config.sae.sites!r} names {', '.join(missing)}, which "
                          f"this model does not have; it has: {', '.join(available)}")
    return saes


def sae_settings(config, model_config, name: str) -> SaeSettings:
    """SAE `name`'s settings: the `sae` section's, with its `sae.per_site` entry over them."""
    sae = {**config.sae.to_dict(), **site_overrides(config, name)}
    base = configured_saes(config)[name]
    return SaeSettings(kind=sae["kind"], width=sae["expansion"] * neuron_width(model_config, base),
                       k=sae["k"], l1_coefficient=float(sae["l1_coefficient"]),
                       aux_k=sae["aux_k"], dead_after_tokens=sae["dead_after_tokens"])


def check_sae_config(config, model) -> None:
    """The `sae` section and each SAE's own settings, refused with one line before any work."""
    check_rules(config, SAE_RULES)
    check_per_site_names(config)
    if config.sae.seq_len > config.model.max_len:
        raise ConfigError(f"sae.seq_len={config.sae.seq_len} exceeds model.max_len="
                          f"{config.model.max_len}; lower sae.seq_len")
    for name, base in sae_sites(config, model.config).items():
        _check_one_sae(config, model, name, base)


def _check_one_sae(config, model, name: str, base: str) -> None:
    """SAE `name`'s settings (the section's, its `sae.per_site` entry over them), each refusal
    naming the key the value came from."""
    overrides = site_overrides(config, name)
    settings = {**config.sae.to_dict(), **overrides}

    def key(setting: str) -> str:
        return f"sae.per_site.{name}.{setting}" if setting in overrides else f"sae.{setting}"

    check_rules({"sae": {"per_site": {name: overrides}}},
                {key(rule_key.split(".")[1]): rule for rule_key, rule in SAE_RULES.items()
                 if rule_key.split(".")[1] in overrides})
    if settings["kind"] not in SAE_KINDS:
        raise ConfigError(f"{key('kind')}={settings['kind']!r} is not one of "
                          f"{', '.join(SAE_KINDS)}")
    width = settings["expansion"] * neuron_width(model.config, base)
    if settings["kind"] != "relu_l1" and settings["k"] > width:
        raise ConfigError(f"{key('k')}={settings['k']} exceeds the {width} latents of the {name} "
                          f"SAE (expansion x the {base} site's width)")


def fit_saes(config, workdir: str | Path) -> dict:
    """Trains (or resumes) and evaluates every SAE of `sae.sites`; returns `{name: evaluation}`."""
    layout = RunLayout(workdir)
    model = model_from_config(config)
    check_sae_config(config, model)
    saes = sae_sites(config, model.config)
    if not saes:
        _say("sae: sae.sites is empty; no SAE to train (e.g. --config.sae.sites=mlp)")
        return {"status": "completed"}
    params, step = _trained_params(config, layout, model)
    tokens = prepare_token_arrays(config.data, model.config.vocab_size, layout.workdir)
    results = {}
    for name, site in saes.items():
        folder = layout.sae(name)
        inputs = _sae_inputs(config, name, step, params, tokens.manifest, model.config)
        claim_folder(folder.directory, folder.inputs, folder.stale, inputs, _say)
        # The evaluation text is not an input of the SAEs: another amount re-evaluates them.
        if _stored_eval_sequences(folder) != config.sae.eval_sequences:
            state = _train_site(config, model, params, tokens, name, folder)
            settings = sae_settings(config, model.config, name)
            windows = evaluation_windows(tokens.validation, config.sae.seq_len,
                                         config.sae.eval_sequences)
            evaluation = {"name": name, "site": site, "settings": dataclasses.asdict(settings),
                          "checkpoint_step": step,
                          "eval_sequences": config.sae.eval_sequences, "layers": evaluate_site(
                              model, params, state, settings, site, windows,
                              config.sae.batch_size),
                          "versions": package_versions()}
            write_json_atomically(folder.evaluation, evaluation)
        results[name] = json.loads(folder.evaluation.read_text())
        for layer, values in results[name]["layers"].items():
            _say(f"sae: {name} layer {layer}: L0 {values['l0']:.1f}, FVU {values['fvu']:.3f}, "
                 f"dead {values['dead_fraction']:.1%}, loss {values['loss_clean']:.3f} clean, "
                 f"{values['loss_spliced']:.3f} spliced, {values['loss_mean_ablated']:.3f} "
                 "mean-ablated")
    return {"status": "completed", "sites": results}


def _stored_eval_sequences(folder: SaeLayout) -> int | None:
    """How many windows the stored evaluation read; None when there is none (or it is torn)."""
    try:
        return json.loads(folder.evaluation.read_text()).get("eval_sequences")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _trained_params(config, layout: RunLayout, model):
    with Checkpointer(layout.checkpoints, save_every=config.train.checkpoint_every,
                      keep=None) as checkpointer:
        step = checkpointer.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {layout.checkpoints}: run the 'train' stage "
                                  "first (config.stages='train,sae')")
        return checkpointer.restore_params(step, abstract_params(model.config)), step


def _sae_inputs(config, name: str, step: int, params, manifest: dict, model_config) -> dict:
    site = configured_saes(config)[name]
    settings = {**config.sae.to_dict(), **site_overrides(config, name)}
    for key in ("sites", "per_site", "log_every", "checkpoint_every", "eval_sequences"):
        settings.pop(key, None)
    inputs = {"checkpoint_step": int(step), "params_sha256": params_sha256(params),
              "data_fingerprint": manifest.get("fingerprint"),
              "tokenizer_fingerprint": manifest.get("tokenizer_fingerprint"),
              "model": model_identity(config.model.to_dict()), "site": site, "sae": settings,
              "width": neuron_width(model_config, site)}
    return json.loads(json.dumps(inputs))


def _train_site(config, model, params, tokens, name: str, folder: SaeLayout) -> SaeState:
    """Trains SAE `name`'s layers to `sae.num_steps`, resuming from the last checkpoint; returns
    the final state."""
    sae = config.sae
    site = configured_saes(config)[name]
    settings = sae_settings(config, model.config, name)
    optimizer = sae_optimizer(sae.learning_rate)
    mesh = make_mesh(config.mesh)
    sampler = WindowSampler(tokens.train, sae.seq_len, sae.batch_size, seed=sae.seed,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())
    capture = make_site_capture(model, site)
    step_fn = make_sae_step(settings, optimizer, mesh)

    def activations(step: int):
        return capture(params, global_batch(stream_batch(sampler, step), batch_sharding(mesh)))

    def fresh() -> SaeState:
        return initial_state(jax.random.key(sae.seed), activations(_INITIALISATION_STEP),
                             settings, optimizer)

    with Checkpointer(folder.checkpoints, save_every=sae.checkpoint_every, keep=2) as checkpoints:
        latest = checkpoints.latest_step()
        abstract = abstract_state(model.config.num_layers, neuron_width(model.config, site),
                                  settings, optimizer)
        state = fresh() if latest is None else SaeState.from_dict(
            checkpoints.restore(latest, abstract.as_dict())[0])
        start = int(state.step)
        with MetricsWriter(folder.directory, resume_step=start if latest else -1) as writer:
            for step in range(start, sae.num_steps):
                x = jax.device_put(activations(step), activation_sharding(mesh))
                state, metrics = step_fn(state, x)
                done = step + 1
                if done % sae.log_every == 0 or done == sae.num_steps:
                    values = jax.device_get(metrics)
                    writer.write(done, _per_layer(values))
                    if not math.isfinite(float(np.mean(values["loss"]))):
                        raise SaeError(f"the {name} SAE's loss is not finite at step "
                                       f"{done}; lower sae.learning_rate")
                    _say(f"sae: {name} step {done} | FVU {np.mean(values['fvu']):.3f} | "
                         f"L0 {np.mean(values['l0']):.1f} | dead "
                         f"{np.mean(values['dead_fraction']):.1%}")
                if done % sae.checkpoint_every == 0 or done == sae.num_steps:
                    checkpoints.save(done, state.as_dict(),
                                     {"settings": dataclasses.asdict(settings), "name": name,
                                      "site": site},
                                     force=True)
    return state


def _per_layer(values: dict) -> dict[str, float]:
    """`{metric: [layers]}` as `{metric: mean, metric_layer<l>: value}`."""
    flat = {}
    for name, per_layer in values.items():
        per_layer = np.asarray(per_layer, np.float64)
        flat[name] = float(per_layer.mean())
        for layer, value in enumerate(per_layer):
            flat[f"{name}_layer{layer}"] = float(value)
    return flat


def _say(message: str) -> None:
    print(message, flush=True)
