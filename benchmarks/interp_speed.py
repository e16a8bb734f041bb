"""Neurons per second of each offline explainer and each score of the interpretability stage.

Reads a finished run's mined records (`interp/records/`) and, for each explainer kind, times what
`interp.evaluate` does per neuron: (a) explaining it under both protocols (`explain_layer`),
(b) simulating and scoring every split of both protocols on the held-out records
(`neuron_scoring._simulate_and_score`), (c) detection and fuzzing of the OpenAI-protocol
explanation (`judging.judge_scores`) on each neuron's cases, and, once for all kinds, (d)
building those cases (`judging.judgement_cases`: the stage builds them once per neuron for
every explainer). The stage explains and simulates a compared explainer (every kind but the
headline) under the OpenAI protocol only, which (a) and (b) here time under both. The interp
settings (`lookup_tokens`, `ngram_patterns`, `ngram_context`, `protocol`, `seed`) are the
run's own, from its `config.json`; keys the run predates take `configs/crate.py`'s defaults.
Each block is one pass over every chosen neuron (all sites and layers) of one kind, repeated
`--repeats` times; a rate is neurons / the median pass. The stage also scores the headline
explainer's random baseline (another neuron's explanation), which repeats (b) and (c) once
more per neuron; this benchmark times the neuron's own explanation only.
Nothing is written to the run.

    python benchmarks/interp_speed.py --run=runs/ablation/runs/crate_seed0 --neurons=64 \
        --json_out=interp_speed.json
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ml_collections
from absl import app, flags

from configs import crate
from crate_jax.atomic_files import write_json_atomically
from crate_jax.data.token_arrays import read_planted_truth
from crate_jax.interp.activations.capture import read_records
from crate_jax.interp.activations.records import NeuronRecord, max_activation
from crate_jax.interp.explanations.backends import make_backend
from crate_jax.interp.explanations.explanation import Explanation, SimulationFailure
from crate_jax.interp.explanations.judging import (
    JudgementCases,
    judge_scores,
    judgement_cases,
)
from crate_jax.interp.explanations.neuron_scoring import _simulate_and_score
from crate_jax.interp.explanations.splits import PROTOCOLS, explanation_records, held_out_records
from crate_jax.interp.explanations.truth_control import PlantedLabels
from crate_jax.layout import RunLayout
from crate_jax.versions import package_versions

_RUN = flags.DEFINE_string("run", None, "A run workdir whose interp/records/ is mined.",
                           required=True)
_SITES = flags.DEFINE_list("sites", [], "Sites to time (default: every site with records).")
_NEURONS = flags.DEFINE_integer("neurons", 64, "Neurons per site and layer, at most.")
_KINDS = flags.DEFINE_list("kinds", ["token_lookup", "ngram", "truth"],
                           "Explainer kinds: token_lookup, ngram, truth (planted runs only).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Passes of each block; the median is reported.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the record here.")


def run_interp_config(layout: RunLayout) -> ml_collections.ConfigDict:
    """The run's `config.interp`, over `configs/crate.py`'s defaults for keys it predates."""
    saved = json.loads(layout.config.read_text())
    interp = crate.get_config(saved.get("size")).interp
    interp.update(saved["interp"])
    return interp


def planted_labels(layout: RunLayout, interp) -> PlantedLabels | None:
    """The planted labels of the evaluation text, as the stage builds them; None off planted."""
    truth = read_planted_truth(layout.data_dir)
    if truth is None:
        return None
    tokens = (json.loads(layout.summary.read_text())["evaluation_tokens"]
              if layout.summary.is_file() else interp.num_sequences * interp.seq_len)
    return PlantedLabels(truth["labels"][:tokens], truth["features"])


def chosen_neurons(layout: RunLayout, sites: list[str], cap: int) -> list[NeuronRecord]:
    """The first `cap` neurons of every (site, layer) with records, positions attached."""
    neurons = []
    for site in sites:
        layer = 0
        while layout.records(site, layer).is_file():
            positions = layout.record_positions(site, layer)
            if not positions.is_file():
                raise FileNotFoundError(f"{positions} is missing (mining of {layout.workdir} is "
                                        "unfinished or predates record positions); use a run "
                                        "whose interp/ is complete")
            neurons.extend(read_records(layout.records(site, layer), positions)[:cap])
            layer += 1
    if not neurons:
        raise FileNotFoundError(f"no records of {', '.join(sites)} in {layout.records_dir}")
    return neurons


def median_seconds(block: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(median wall seconds of `repeats` calls of `block`, the last call's result)."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = block()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def build_cases(neurons: list[NeuronRecord], interp) -> list[JudgementCases]:
    return [judgement_cases(neuron, interp.protocol, interp.seed) for neuron in neurons]


def measure(kind: str, neurons: list[NeuronRecord], interp, truth: PlantedLabels | None,
            cases: list[JudgementCases], repeats: int) -> dict:
    """Median seconds of each block over `neurons` for explainer `kind`, and neurons/s."""
    explainer, simulator, judge = make_backend(interp, kind, truth)
    record_protocol = interp.protocol

    def explain_all() -> list[dict]:
        explained = []
        for neuron in neurons:
            entry = {}
            for protocol in PROTOCOLS:
                records = explanation_records(neuron, protocol, record_protocol)
                try:
                    entry[protocol] = dataclasses.asdict(
                        explainer.explain(records, max_activation(records)))
                except SimulationFailure as failure:
                    entry[protocol] = {"failure": str(failure)}
            explained.append(entry)
        return explained

    def simulate_all(explained: list[dict]) -> int:
        failed = 0
        for neuron, entry in zip(neurons, explained, strict=True):
            for protocol in PROTOCOLS:
                groups = held_out_records(neuron, protocol, record_protocol)
                failed += bool(_simulate_and_score(entry[protocol], groups, simulator,
                                                   protocol)[1])
        return failed

    def judge_all(explained: list[dict]) -> int:
        failed = 0
        for neuron_cases, entry in zip(cases, explained, strict=True):
            if "failure" in entry["openai"]:
                failed += 1
                continue
            try:
                judge_scores(judge, Explanation(**entry["openai"]), neuron_cases)
            except SimulationFailure:
                failed += 1
        return failed

    explain_s, explained = median_seconds(explain_all, repeats)
    simulate_s, simulation_failures = median_seconds(lambda: simulate_all(explained), repeats)
    judge_s, judge_failures = median_seconds(lambda: judge_all(explained), repeats)
    count = len(neurons)
    return {"kind": kind, "neurons": count,
            "explain_seconds": explain_s, "simulation_seconds": simulate_s,
            "detection_fuzzing_seconds": judge_s,
            "explain_neurons_per_second": count / explain_s,
            "simulation_neurons_per_second": count / simulate_s,
            "detection_fuzzing_neurons_per_second": count / judge_s,
            "explanation_failures": sum("failure" in entry[p] for entry in explained
                                        for p in PROTOCOLS),
            "simulation_failures": simulation_failures, "judge_failures": judge_failures}


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.machine(), "load_average_at_start": list(os.getloadavg())}


def markdown_table(results: list[dict]) -> str:
    lines = ["| kind | explain neurons/s | simulation neurons/s | detection+fuzzing neurons/s "
             "| neurons |", "|---|---:|---:|---:|---:|"]
    for row in results:
        lines.append(f"| {row['kind']} | {row['explain_neurons_per_second']:,.1f} "
                     f"| {row['simulation_neurons_per_second']:,.1f} "
                     f"| {row['detection_fuzzing_neurons_per_second']:,.1f} "
                     f"| {row['neurons']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    layout = RunLayout(Path(_RUN.value))
    interp = run_interp_config(layout)
    sites = _SITES.value or sorted(p.name for p in layout.records_dir.iterdir() if p.is_dir())
    neurons = chosen_neurons(layout, sites, _NEURONS.value)
    truth = planted_labels(layout, interp)
    record = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "command": shlex.join(["python", *sys.argv]), "machine": machine(),
              "versions": package_versions(), "run": str(layout.workdir), "sites": sites,
              "neurons_per_layer": _NEURONS.value, "repeats": _REPEATS.value,
              "timing": "median of the repeats of one pass over all neurons; rate = neurons / "
                        "median seconds",
              "interp": {key: interp[key] for key in ("protocol", "lookup_tokens",
                                                      "ngram_patterns", "ngram_context", "seed")},
              "results": []}
    cases_s, cases = median_seconds(lambda: build_cases(neurons, interp), _REPEATS.value)
    record["cases_neurons_per_second"] = len(neurons) / cases_s
    for kind in _KINDS.value:
        record["results"].append(measure(kind, neurons, interp, truth, cases, _REPEATS.value))
        print(f"measured {kind}", file=sys.stderr, flush=True)
    print(f"run {layout.workdir}, sites {', '.join(sites)}, at most {_NEURONS.value} neurons per "
          f"site and layer; median of {_REPEATS.value} passes\n")
    print(markdown_table(record["results"]))
    print(f"\ndetection and fuzzing cases (built once per neuron for every kind): "
          f"{record['cases_neurons_per_second']:,.1f} neurons/s")
    print(f"\nmachine: {record['machine']}\nversions: {record['versions']}", flush=True)
    if _JSON_OUT.value:
        out = Path(_JSON_OUT.value)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(out, record)


if __name__ == "__main__":
    app.run(main)
