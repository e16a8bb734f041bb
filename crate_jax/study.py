"""The `study` stage: run every (variant, seed) of an ablation study as an ordinary run.

Each run lives in `workdir/runs/<variant>_seed<seed>/` and goes through the `train` and `interp`
stages, which resume on their own; so a finished run is never redone and an interrupted study
continues where it stopped. The study's shared settings (size, data, training budget,
interpretability) override each variant's, and everything is checked before any training starts.
The study's config is saved in its workdir before the first run: the report takes its settings
from there, whoever rebuilds it (`report.study_report`).

`study.saes` (`{variant: sae.sites}`) gives a variant's runs SAEs (`crate_jax/sae/`): they go
through the `sae` stage between `train` and `interp`, so the SAEs' latents are scored like the
model's own neurons, and so do their untrained controls (an SAE fitted the same way on the
untrained model). The `sae` section is the study's, the same for every variant. With
`study.sae_k_from` (`VARIANT/SITE`, e.g. `crate/ista`) `sae.k` is that site's measured L0 (its
mean number of active neurons per token, over the variant's runs and layers, rounded), computed
once that variant's runs are done: an SAE as sparse as CRATE's own sparse code.

With `study.controls` (on by default) each run also gets its untrained control in
`workdir/controls/<variant>_seed<seed>/`: the run's step 0, its initialisation from the same seed,
explained and scored by the same `interp` stage with the very same config object. A random
network already maps each token to a fixed activation, which a token-level explanation captures,
so the report shows each score beside the score of the same model before training.
"""

from __future__ import annotations

import copy
import importlib
import json
import pkgutil
import shutil
import time
from pathlib import Path

from crate_jax.atomic_files import write_text_atomically
from crate_jax.compilation_cache import compilation_cache_in
from crate_jax.data.token_arrays import prepare_token_arrays
from crate_jax.input_checks import check_run_config
from crate_jax.interp.evaluate import evaluate_interpretability
from crate_jax.layout import RunLayout, StudyLayout
from crate_jax.model import ConfigError, model_from_config, neuron_sites
from crate_jax.model.config import KERNEL_KEYS
from crate_jax.process_memory import peak_memory_bytes, release_memory
from crate_jax.report import run_files
from crate_jax.report.ablation_table import markdown_table
from crate_jax.report.study_report import write_study_report
from crate_jax.sae.sites import configured_saes, parse_sae_sites
from crate_jax.sae.stage import check_sae_config, fit_saes
from crate_jax.study_workers import InProcess, Workers, workers_for
from crate_jax.train.loop import save_initial_state, train_and_evaluate
from crate_jax.workdir_lock import hold_workdir

SHARED_SECTIONS = ("data", "train", "mesh", "interp")  # and model.vocab_size, set by the corpus
RUN_STAGES = ("train", "interp")  # what each run of the study goes through
SAE_RUN_STAGES = ("train", "sae", "interp")  # ... and each run of a variant in `study.saes`


def _names(text: str, what: str) -> list[str]:
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    if not names:
        raise ConfigError(f"study.{what} is empty")
    return names


def _seeds(text: str) -> list[int]:
    try:
        return [int(seed) for seed in _names(text, "seeds")]
    except ValueError:
        raise ConfigError(f"study.seeds={text!r} is not a comma-separated list of integers, "
                          "e.g. '0,1,2'") from None


def study_variants(config) -> dict[str, tuple[str, list[int]]]:
    """`{variant name: (config file, seeds)}` from `study.variants` and `study.seeds`.

    An entry `NAME=CONFIG` runs `configs/CONFIG.py` under the name NAME, so one config can be
    compared with itself (`crate,crate_copy=crate`: an A/A check of the statistics); such a copy
    needs seeds of its own in `study.variant_seeds.NAME` (the same seeds would train the very
    same runs). `study.variant_seeds` may give any variant its own seeds."""
    names = {}
    for entry in _names(config.study.variants, "variants"):
        name, _, source = (part.strip() for part in entry.partition("="))
        if not name.isidentifier() or (source and not source.isidentifier()):
            raise ConfigError(f"study.variants entry {entry!r} is neither a config name nor "
                              "NAME=CONFIG (e.g. crate_copy=crate)")
        if name in names:
            raise ConfigError(f"study.variants names {name!r} twice; give a copy a name of its "
                              f"own, e.g. {name}_copy={source or name}")
        names[name] = source or name
    variant_seeds = config.study.get("variant_seeds", None) or {}
    unknown = sorted(set(variant_seeds) - set(names))
    if unknown:
        raise ConfigError(f"study.variant_seeds names {', '.join(unknown)}, which study.variants "
                          f"does not ({', '.join(names)})")
    seeds = _seeds(config.study.seeds)
    chosen = {name: (source, _seeds(variant_seeds[name]) if name in variant_seeds else seeds)
              for name, source in names.items()}
    for name, (source, its_seeds) in chosen.items():
        for other, (other_source, other_seeds) in chosen.items():
            shared = sorted(set(other_seeds) & set(its_seeds))
            if other != name and other_source == source and shared:
                raise ConfigError(f"study.variants {name!r} and {other!r} both run configs/"
                                  f"{source}.py with seeds {shared}: they would be the same "
                                  f"runs; give one other seeds in study.variant_seeds.{name}")
    return chosen


def study_saes(config, variants: dict) -> dict[str, str]:
    """`study.saes`: `{variant: the sae.sites of its runs}` of the variants this study runs (an
    entry of a variant it leaves out is set aside; one that names no variant is refused)."""
    saes = dict(config.study.get("saes", None) or {})
    unknown = sorted(set(saes) - set(variants) - set(model_variants(config.size)))
    if unknown:
        raise ConfigError(f"study.saes names {', '.join(unknown)}, which is no variant (the "
                          f"study's: {', '.join(variants)})")
    saes = {name: sites for name, sites in saes.items() if name in variants}
    empty = sorted(name for name, sites in saes.items() if not str(sites).strip())
    if empty:
        raise ConfigError(f"study.saes gives {', '.join(empty)} no SAE site; drop the entry or "
                          "name sites, e.g. {'gpt2': 'mlp'}")
    return {name: str(sites) for name, sites in saes.items()}


def _study_per_site(config) -> dict:
    """`sae.per_site`, naming only SAEs that an entry of `study.saes` fits (each run gets the
    entries of its own SAEs)."""
    per_site = config.sae.get("per_site") or {}
    per_site = per_site.to_dict() if hasattr(per_site, "to_dict") else dict(per_site)
    saes = dict(config.study.get("saes", None) or {})
    fitted = {name for sites in saes.values() for name in parse_sae_sites(str(sites))}
    stray = sorted(set(per_site) - fitted)
    if stray:
        raise ConfigError(f"sae.per_site names {', '.join(stray)}, which no entry of "
                          f"study.saes fits ({saes})")
    return per_site


def sae_k_source(config, variants: dict, saes: dict, runs: dict) -> tuple[str, str] | None:
    """`study.sae_k_from` as `(variant, site)`, or None: sae.k as configured. The variant must
    run before every variant with SAEs (its L0 is measured first) and have the site."""
    source = str(config.study.get("sae_k_from", None) or "").strip()
    if not source or not saes:
        return None
    variant, _, site = source.partition("/")
    if variant not in variants or not site:
        raise ConfigError(f"study.sae_k_from={source!r} is not VARIANT/SITE of a study variant "
                          f"(e.g. crate/ista; the variants: {', '.join(variants)})")
    if variant in saes:
        raise ConfigError(f"study.sae_k_from measures {variant}'s L0 for the SAEs, so {variant} "
                          "cannot have SAEs of its own in study.saes")
    order = list(variants)
    early = [name for name in saes if order.index(name) < order.index(variant)]
    if early:
        raise ConfigError(f"study.sae_k_from measures {variant}'s L0, but {', '.join(early)} "
                          f"(with SAEs) runs before {variant}: list {variant} first in "
                          "study.variants")
    first = next(run for run in runs.values() if run.variant == variant)
    if site not in neuron_sites(model_from_config(first).config):
        raise ConfigError(f"study.sae_k_from={source!r}: {variant} has no {site} site")
    return variant, site


def run_configs(config) -> dict[str, object]:
    """`{run name: config}` for every variant and seed, each checked as a run of its stages
    before anything runs."""
    variants = study_variants(config)
    with_controls(config)
    saes = study_saes(config, variants)
    per_site = _study_per_site(config)
    requested_sites = _names(config.interp.sites, "sites") if config.interp.sites else []
    runs = {}
    for variant, (source, seeds) in variants.items():
        module = _variant_module(source, config.size)
        for seed in seeds:
            run = module.get_config(config.size)
            run.variant, run.seed = variant, seed
            for section in SHARED_SECTIONS:
                run[section] = config[section]
            # The corpus decides the vocabulary and the study the kernels (every variant computed
            # alike); the rest of the model is the variant's own.
            run.model.vocab_size = config.model.vocab_size
            for key in KERNEL_KEYS:
                run.model[key] = config.model[key]
            run.sae = copy.deepcopy(config.sae)  # its own: `sites` and `k` are set per variant
            run.sae.sites = saes.get(variant, "")
            run.sae.per_site = {name: settings for name, settings in per_site.items()
                                if name in configured_saes(run)}
            run.stages = ",".join(run_stages(run))
            model = model_from_config(run)  # checks the variant's model keys
            missing = [s for s in requested_sites if s not in neuron_sites(model.config)]
            if missing:
                raise ConfigError(f"variant {variant!r} has no {', '.join(missing)} site (it has "
                                  f"{', '.join(neuron_sites(model.config))}); drop it from "
                                  "interp.sites or from study.variants")
            check_run_config(run, run_stages(run))
            runs[StudyLayout.run_name(variant, seed)] = run
    sae_k_source(config, variants, saes, runs)
    return runs


def run_stages(run) -> tuple[str, ...]:
    """The stages a study run goes through: `sae` too where it has SAEs."""
    return SAE_RUN_STAGES if run.sae.sites else RUN_STAGES


def matched_k(study: StudyLayout, manifest: dict, variant: str, site: str) -> dict:
    """`{"from", "mean_l0", "k"}`: the mean over `variant`'s finished runs and layers of `site`'s
    L0 (`interp/sparsity.json`), rounded to the nearest k >= 1."""
    layers = [layer["mean_l0"] for run in manifest["runs"].values() if run["variant"] == variant
              for layer in run_files.sparsity(study.workdir / run["workdir"])[site].values()]
    mean = sum(layers) / len(layers)
    return {"from": f"{variant}/{site}", "mean_l0": mean, "k": max(1, round(mean))}


def with_controls(config) -> bool:
    """`study.controls`: whether every run gets its untrained control (default: yes)."""
    controls = config.study.get("controls", True)
    if not isinstance(controls, bool):
        raise ConfigError(f"study.controls={controls!r} must be True or False (score each "
                          "variant's untrained initialisation beside it, or not)")
    return controls


def model_variants(size: str) -> list[str]:
    """The config files in `configs/` that define one model variant (not a study, not a helper),
    as `study.variants` names them."""
    package = importlib.import_module("configs")
    variants = []
    for name in sorted(info.name for info in pkgutil.iter_modules(package.__path__)):
        try:
            if _is_variant(importlib.import_module(f"configs.{name}"), size):
                variants.append(name)
        except Exception:  # a file that does not load is not a variant to offer
            continue
    return variants


def _is_variant(module, size: str) -> bool:
    get_config = getattr(module, "get_config", None)
    return callable(get_config) and "study" not in get_config(size)


def _variant_module(variant: str, size: str):
    """The module of `configs/<variant>.py`, which must define a model variant."""
    try:
        module = importlib.import_module(f"configs.{variant}") if variant.isidentifier() else None
    except ModuleNotFoundError as error:
        if error.name == "configs":
            raise ConfigError("study.variants are files in configs/, but no configs package can "
                              "be imported: give --config as a path inside configs/") from None
        if error.name != f"configs.{variant}":
            raise ConfigError(f"configs/{variant}.py cannot be imported: {error}") from None
        module = None
    if module is not None and _is_variant(module, size):
        return module
    what = (f"configs/{variant}.py is not a model variant" if module is not None
            else f"there is no configs/{variant}.py")
    raise ConfigError(f"study.variants names {variant!r}, but {what}; the variants are: "
                      f"{', '.join(model_variants(size))}")


def run_study(config, workdir: str | Path) -> dict:
    """Trains and evaluates every run of the study (skipping finished work); returns a manifest.

    A run stopped by a signal ends the study there (status `interrupted`): nothing after it is
    evaluated or reported until a rerun has finished it."""
    started = time.perf_counter()
    study = StudyLayout(workdir)
    runs = run_configs(config)
    controls = with_controls(config)
    workers = workers_for(config, len(runs))  # checked before any work, as the runs are
    study.workdir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(study.config, config.to_json(indent=2, sort_keys=True))
    resumed = study.runs_dir.exists()
    # Tokenize once: every run shares the data settings, so they share the token arrays.
    prepare_token_arrays(config.data, config.model.vocab_size, study.workdir)
    variants = study_variants(config)
    configs = {name: source for name, (source, _) in variants.items()}
    saes = study_saes(config, variants)
    k_source = sae_k_source(config, variants, saes, runs)
    manifest = {"runs": {}, "controls": {}, "variants": config.study.variants,
                "seeds": config.study.seeds,
                "variant_seeds": {name: seeds for name, (_, seeds) in variants.items()},
                "saes": saes}
    if workers > 1:
        print(f"study: {workers} runs at a time, each in a worker process; their output is in "
              f"{study.worker_log('*')}", flush=True)
    finished = {}
    pending = list(runs.items())
    # Each variant's programs compiled once, by its first run; the others load them.
    with compilation_cache_in(study.compilation_cache), \
            (Workers(workers) if workers > 1 else InProcess()) as runner:
        while pending or runner.running:
            while pending and runner.has_room() and _may_start(pending[0][1], k_source, runs,
                                                               finished):
                name, run = pending.pop(0)
                index = list(runs).index(name) + 1
                print(f"study: run {index}/{len(runs)}: {name}", flush=True)
                if run.sae.sites and k_source is not None:
                    manifest.setdefault("sae_k", matched_k(study, _in_order(finished, runs),
                                                           *k_source))
                    run.sae.k = manifest["sae_k"]["k"]
                    check_sae_config(run, model_from_config(run))  # before this run's SAE work
                runner.start(name, run_with_control,
                             (name, run, str(study.workdir), controls, configs, index, len(runs)),
                             study.worker_log(name))
            name, outcome = runner.next_finished()
            if outcome["status"] == "interrupted":  # saved; the rerun resumes this run
                runner.stop()
                return {**manifest, "status": "interrupted", "signal": outcome.get("signal"),
                        "interrupted_run": name}
            finished[name] = outcome
            if workers > 1:
                print(f"study: {name} done ({len(finished)}/{len(runs)})", flush=True)
    manifest.update(_in_order(finished, runs))
    write_text_atomically(study.manifest, json.dumps(manifest, indent=2))
    rows, page = write_study_report(study.workdir)
    # What this invocation cost: the whole study when it ran from an empty workdir.
    manifest.update(wall_seconds=time.perf_counter() - started, resumed=resumed,
                    peak_memory_bytes=peak_memory_bytes(workers=True), workers=workers)
    write_text_atomically(study.manifest, json.dumps(manifest, indent=2))
    print(markdown_table(rows, answer_last=True), flush=True)
    print(f"study: open {page}", flush=True)
    return manifest


def run_with_control(name: str, run, workdir: str, controls: bool, configs: dict[str, str],
                     index: int, total: int) -> dict:
    """One job of the study: run `name` through its stages, then its untrained control; in the
    study's process or in a worker (`study_workers`). Returns `{"status": "completed", "run":
    its manifest entry, "control": ...}`, or `{"status": "interrupted", "signal": ...}` where a
    signal stopped its training (saved: the rerun resumes it)."""
    study = StudyLayout(workdir)
    with compilation_cache_in(study.compilation_cache):  # a worker's own; the study's already
        run_layout = _with_study_data(study, study.run(name))
        # Each run's own lock too: `--workdir=<study>/runs/<name>` from elsewhere is refused.
        with hold_workdir(run_layout.workdir):
            trained = train_and_evaluate(run, run_layout.workdir)
            if trained["status"] == "interrupted":
                return {"status": "interrupted", "signal": trained.get("signal")}
            release_memory()  # each stage's peak on its own, not on the last one's leftovers
            if run.sae.sites:
                fit_saes(run, run_layout.workdir)
                release_memory()
            evaluate_interpretability(run, run_layout.workdir)
            release_memory()
        result = {"status": "completed", "run": _manifest_entry(run, configs, run_layout, study)}
        if controls:
            control = _with_study_data(study, study.control(name))
            print(f"study: untrained control {index}/{total}: {name}", flush=True)
            with hold_workdir(control.workdir):
                save_initial_state(run, control.workdir)
                if run.sae.sites:  # SAEs fitted the same way, on the untrained model
                    fit_saes(run, control.workdir)
                    release_memory()
                evaluate_interpretability(run, control.workdir)  # the run's own config object
                release_memory()
            result["control"] = _manifest_entry(run, configs, control, study)
    return result


def _may_start(run, k_source: tuple[str, str] | None, runs: dict, finished: dict) -> bool:
    """Whether `run` can start now: a run with SAEs whose k is measured (`study.sae_k_from`)
    waits until every run of the measured variant has finished."""
    if not (run.sae.sites and k_source is not None):
        return True
    return all(name in finished for name, other in runs.items() if other.variant == k_source[0])


def _in_order(finished: dict[str, dict], runs: dict) -> dict:
    """The manifest's `runs` and `controls` entries of the finished jobs, in the study's order
    (workers finish in any order; the manifest, the measured k and the report do not)."""
    names = [name for name in runs if name in finished]
    return {"runs": {name: finished[name]["run"] for name in names},
            "controls": {name: finished[name]["control"] for name in names
                         if "control" in finished[name]}}


def _with_study_data(study: StudyLayout, run_layout: RunLayout) -> RunLayout:
    """`run_layout`, with the study's token arrays copied in (every run shares them)."""
    if not run_layout.data_dir.exists():
        shutil.copytree(study.data_dir, run_layout.data_dir)
    return run_layout


def _manifest_entry(run, configs: dict[str, str], run_layout: RunLayout,
                    study: StudyLayout) -> dict:
    return {"variant": run.variant, "config": configs[run.variant], "seed": run.seed,
            "workdir": str(run_layout.workdir.relative_to(study.workdir))}
