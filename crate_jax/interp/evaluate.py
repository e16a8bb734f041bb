"""`evaluate_interpretability(config, workdir)`: the interpretability stage of a run.

Restores the trained parameters from the run's last checkpoint, mines records and sparsity for
every neuron site (`interp/records/`), explains and scores the chosen neurons with
`interp.explainer` (`interp/scores/<site>/layer_<l>/`, each beside its token reference) and
with each of `interp.compared_explainers` (`interp/explainers/<kind>/...`): simulation scores,
detection and fuzzing (`judging`). On a planted corpus it checks every explainer's scores
against the ground truth (`ground_truth.json`). It writes `interp/summary.json` and
`interp/report.md`.
Each step reuses what is already on disk, so rerunning after an interruption resumes, as long
as `interp/inputs.json` says it was computed from the same inputs (`freshness`); neurons whose
explanation or simulation failed are retried (`interp.retry_failed`).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import jax

from crate_jax.atomic_files import write_json_atomically, write_text_atomically
from crate_jax.data.token_arrays import prepare_token_arrays, read_planted_truth
from crate_jax.data.tokenizer import load_saved_tokenizer
from crate_jax.interp.activations.capture import (
    InterpretabilityError,
    evaluation_sequences,
    mine_records,
    read_records,
)
from crate_jax.interp.explanations.backends import (
    check_llm_server,
    explainer_kinds,
    make_backend,
)
from crate_jax.interp.explanations.neuron_scoring import explain_layer, score_layer
from crate_jax.interp.explanations.splits import PROTOCOLS, check_record_protocol
from crate_jax.interp.explanations.token_reference import TokenReference
from crate_jax.interp.explanations.truth_control import PlantedLabels
from crate_jax.interp.freshness import claim_outputs, interp_inputs
from crate_jax.interp.ground_truth import (
    MIN_JUDGED_TOKENS,
    RECOVERY_AUROC,
    capture_all_neurons,
    layer_ground_truth,
    loss_above_floor,
    score_validity,
    score_vs_truth,
)
from crate_jax.interp.run_summary import layer_summary, markdown_report
from crate_jax.layout import RunLayout
from crate_jax.model import abstract_params, model_from_config, neuron_sites
from crate_jax.sae.latents import SiteReader, as_reader, load_trained_saes
from crate_jax.sae.sites import configured_saes, sae_site
from crate_jax.train.checkpoints import Checkpointer
from crate_jax.versions import package_versions


def restore_params(config, workdir: Path, model):
    """The parameters of the run's last checkpoint (the trained model this stage explains); the
    optimizer state beside them is not read."""
    with Checkpointer(RunLayout(workdir).checkpoints, save_every=config.train.checkpoint_every,
                      keep=None) as checkpointer:
        step = checkpointer.latest_step()
        if step is None:
            raise InterpretabilityError(
                f"no checkpoint in {RunLayout(workdir).checkpoints}: run the 'train' stage first "
                "(config.stages='train,interp')")
        params = checkpointer.restore_params(step, abstract_params(model.config))
    return params, step


def requested_sites(config, model) -> tuple[str, ...]:
    """`interp.sites`, or every site: the model's and the latents of the SAEs `sae.sites`
    fits (`sae_<name>`)."""
    available = neuron_sites(model.config) + tuple(
        sae_site(name) for name in configured_saes(config))
    if not config.interp.sites:
        return available
    sites = tuple(s.strip() for s in config.interp.sites.split(",") if s.strip())
    missing = [s for s in sites if s not in available]
    if missing:
        raise InterpretabilityError(f"interp.sites asks for {', '.join(missing)}, which this "
                                    f"model does not have; it has: {', '.join(available)}")
    return sites


def evaluate_interpretability(config, workdir: str | Path) -> dict:
    """Runs (or resumes) the evaluation; returns the summary written to `summary.json`."""
    layout = RunLayout(workdir)
    interp = config.interp
    check_record_protocol(interp.protocol, interp.top_k, interp.random_k)
    started = time.perf_counter()
    model = model_from_config(config)
    sites = requested_sites(config, model)
    params, step = restore_params(config, layout.workdir, model)
    reader = SiteReader(model, load_trained_saes(layout, model, {
        name: base for name, base in configured_saes(config).items() if sae_site(name) in sites}))
    unfitted = [site for site in sites if site not in reader.sites()]
    if unfitted:
        raise InterpretabilityError(
            f"interp reads {', '.join(unfitted)}, but {layout.workdir} has no finished SAEs "
            "there: run the 'sae' stage first (config.stages='train,sae,interp')")
    tokens = prepare_token_arrays(config.data, model.config.vocab_size, layout.workdir)
    tokenizer = load_saved_tokenizer(config.data.tokenizer, layout.data_dir,
                                     model.config.vocab_size)
    decode = functools.lru_cache(maxsize=None)(lambda token: tokenizer.decode([token]))
    sequences = evaluation_sequences(tokens.validation, interp.seq_len, interp.num_sequences)

    # Before any other output: what is in `interp/` from here on was computed from these inputs.
    claim_outputs(layout, interp_inputs(config, step, params, tokens.manifest, reader.saes),
                  _say)
    if not layout.sparsity.exists():
        check_llm_server(interp)  # before minutes of mining, not after them
        _say(f"interp: mining records of {', '.join(sites)} on {sequences.size:,} tokens")
        sparsity = mine_records(reader, params, sequences, sites, interp, decode, layout)
        # Written last: its presence means mining finished.
        write_json_atomically(layout.sparsity, sparsity)
    sparsity = _read_json(layout.sparsity)

    truth = read_planted_truth(layout.data_dir)
    labels = (PlantedLabels(truth["labels"][:sequences.size], truth["features"])
              if truth is not None else None)
    kinds = explainer_kinds(interp)
    backends = {kind: make_backend(interp, kind, labels) for kind in kinds}
    scored: dict = {kind: {} for kind in kinds}  # {kind: {(site, layer): {neuron: scores}}}
    layer_summaries: dict = {kind: {site: {} for site in sites} for kind in kinds}
    entries: list[dict] = []
    for site in sites:
        for layer in range(model.config.num_layers):
            neurons = read_records(layout.records(site, layer),
                                   layout.record_positions(site, layer))
            cases: dict = {}  # each neuron's detection and fuzzing cases, for every explainer
            for kind in kinds:
                explainer, simulator, judge = backends[kind]
                headline = kind == kinds[0]
                layer_dir = layout.layer_scores(site, layer,
                                                None if headline else kind).directory
                layer_dir.mkdir(parents=True, exist_ok=True)
                # A compared explainer is there to be checked against the truth, on the OpenAI
                # protocol's scores, detection and fuzzing: the Anthropic protocol, the
                # other-neuron baseline and the token reference are the headline's only.
                protocols = PROTOCOLS if headline else ("openai",)
                explanations = explain_layer(neurons, explainer, layer_dir, interp.workers,
                                             record_protocol=interp.protocol,
                                             retry_failed=interp.retry_failed,
                                             protocols=protocols)
                reference = (TokenReference(layout.token_means(site, layer), decode)
                             if headline else None)
                scores = score_layer(neurons, explanations, simulator, layer_dir,
                                     random_baseline=interp.random_baseline and headline,
                                     seed=interp.seed, layer=layer, workers=interp.workers,
                                     record_protocol=interp.protocol,
                                     retry_failed=interp.retry_failed, reference=reference,
                                     judge=judge, protocols=protocols, cases=cases)
                if headline:
                    entries.extend(scores.values())
                scored[kind][site, layer] = {index: entry["scores"]
                                             for index, entry in scores.items()}
                layer_summaries[kind][site][str(layer)] = layer_summary(
                    scores, sparsity[site][str(layer)], samples=interp.bootstrap_samples,
                    seed=interp.seed)
                _say(f"interp: {kind}: {site} layer {layer}: {len(scores)} neurons scored")
    check_failures(entries, interp)

    if truth is not None:
        _say("interp: ground truth of the planted features")
        ground_truth = planted_ground_truth(reader, params, sequences, sites, interp.batch_size,
                                            truth, scored, kinds[0], tokenizer.end_of_text)
        write_json_atomically(layout.ground_truth, ground_truth)
    elapsed = time.perf_counter() - started
    summary = {"variant": config.variant, "size": config.size, "checkpoint_step": step,
               "explainer": interp.explainer, "seed": interp.seed,
               "evaluation_tokens": int(sequences.size), "sites": layer_summaries[kinds[0]],
               "compared_explainers": {kind: layer_summaries[kind] for kind in kinds[1:]},
               "config": config.interp.to_dict(), "versions": package_versions(),
               "seconds_this_run": elapsed, "neurons_scored": len(entries),
               "saes": {name: _read_json(layout.sae(name).evaluation) for name in reader.saes}}
    write_json_atomically(layout.summary, summary)
    write_text_atomically(layout.interp_report, markdown_report(summary))
    _say(markdown_report(summary))
    return summary


def check_failures(entries: list[dict], interp) -> None:
    """Says how many neurons have failed splits; stops the stage when no neuron got any score
    (a dead or misconfigured LLM server), so such a run cannot pass for a finished one."""
    failed = [entry for entry in entries if entry["failures"]]
    if not failed:
        return
    entirely = sum(not entry["scores"] for entry in failed)
    first = next(iter(failed[0]["failures"].values()))
    retry = ("a rerun retries them" if interp.retry_failed
             else "rerun with interp.retry_failed=True to retry them")
    if entirely == len(entries):
        raise InterpretabilityError(
            f"all {len(entries)} neurons failed, none was scored (first failure: {first}); "
            f"check the {interp.explainer} backend (interp.llm.base_url={interp.llm.base_url}, "
            f"interp.llm.model={interp.llm.model!r}), then {retry}")
    _say(f"interp: {len(failed)} of {len(entries)} neurons have failed splits ({entirely} "
         f"entirely; first failure: {first}); {retry}")


def planted_ground_truth(model, params, sequences, sites: tuple[str, ...], batch_size: int,
                         truth: dict, scored: dict, headline: str, end_of_text: int) -> dict:
    """`ground_truth.json`: per site and layer, how the neurons encode the planted features
    (recovery, each neuron's selectivity; `ground_truth.layer_ground_truth`) and how the
    headline explainer's top-and-random scores rank against that truth; per explainer, site
    and score, that rank correlation over the site's neurons (`validity`).

    `scored`: `{explainer: {(site, layer): {neuron: {score: value}}}}`. `truth` is the data's
    planted validation truth; the evaluation sequences are the first validation tokens, so its
    first `sequences.size` label rows describe them in order.
    """
    num_layers = as_reader(model).model.config.num_layers
    labels = truth["labels"][:sequences.size]
    names = [str(name) for name in truth["features"]]
    activations, nll = capture_all_neurons(model, params, sequences, sites, batch_size)
    result = {"features": names, "tokens": int(sequences.size), "sites": {},
              "recovery_auroc": RECOVERY_AUROC, "min_judged_tokens": MIN_JUDGED_TOKENS,
              "loss_above_floor": loss_above_floor(nll, truth["floor_nll"][:sequences.size],
                                                   labels, names, sequences=sequences,
                                                   end_of_text=end_of_text)}
    for site in sites:
        result["sites"][site] = {}
        for layer in range(num_layers):
            entry = layer_ground_truth(activations[site][layer], labels, names)
            entry["score_vs_truth"] = score_vs_truth(
                entry, {index: scores.get("top_and_random")
                        for index, scores in scored[headline][site, layer].items()})
            result["sites"][site][str(layer)] = entry
    result["validity"] = {
        kind: {site: score_validity(result["sites"][site],
                                    {str(layer): by_layer[site, layer]
                                     for layer in range(num_layers)})
               for site in sites}
        for kind, by_layer in scored.items()}
    return result


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)
