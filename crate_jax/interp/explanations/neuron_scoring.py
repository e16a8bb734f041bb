"""Explain, simulate and score every neuron of one (site, layer), resumably.

Two append-only files per layer: `explanations.jsonl` (both protocols' explanations of each
neuron) and `scores.jsonl` (scores per split, the random baseline's scores and the simulations).
A line is written as soon as its neuron is done; a rerun skips neurons already on file, so an
interrupted evaluation (a crash, a dead LLM server) loses nothing and resumes where it stopped.
With `retry_failed`, a rerun also redoes the neurons whose line records a failure (a bad LLM
answer is often a one-off) and appends the new line: the last line of a neuron is its result.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from crate_jax.interp.activations.capture import InterpretabilityError
from crate_jax.interp.activations.records import (
    ActivationRecord,
    NeuronRecord,
    max_activation,
    shown_tokens,
)
from crate_jax.interp.explanations.explanation import (
    Explainer,
    Explanation,
    Judge,
    SimulationFailure,
    Simulator,
)
from crate_jax.interp.explanations.judging import (
    JUDGED_SCORES,
    JudgementCases,
    judge_scores,
    judgement_cases,
)
from crate_jax.interp.explanations.scoring import split_scores
from crate_jax.interp.explanations.splits import (
    PROTOCOL_OF_SPLIT,
    PROTOCOLS,
    explanation_records,
    held_out_records,
    protocol_splits,
    split_groups,
)
from crate_jax.interp.explanations.thread_pool import map_in_threads
from crate_jax.interp.explanations.token_reference import TokenReference
from crate_jax.layout import LayerScoresLayout

# Every score of a scores.jsonl line: the simulation splits, then detection and fuzzing.
SCORES = (*PROTOCOL_OF_SPLIT, *JUDGED_SCORES)


def read_neuron_lines(path: Path, *, repair: bool) -> dict[int, dict]:
    """The last line of each neuron in an append-only JSONL file, by neuron index.

    A last line without its newline, or one that does not parse, is what a writer killed
    mid-line leaves. With `repair` it is cut off the file (one warning line), so the next append
    starts a line of its own and that neuron is redone; without (readers that must not write,
    such as the report) it is only skipped. A damaged line before the last is no such
    artefact, and an `InterpretabilityError` names the file and line.
    """
    if not path.exists():
        return {}
    lines = [line + b"\n" for line in path.read_bytes().split(b"\n")]
    lines[-1] = lines[-1][:-1]  # what follows the last newline: nothing, in a whole file
    entries, offset = {}, 0
    for number, line in enumerate(lines, start=1):
        entry = _entry(line)
        if entry is None and line.strip():
            if number < len(lines) - (lines[-1] == b""):
                raise InterpretabilityError(
                    f"{path} line {number} is damaged (not a neuron's JSON line, and not the "
                    "last line, which a stopped run may cut); restore the file, or delete it "
                    "to redo that layer")
            _drop_partial_line(path, offset, repair)
            break
        if entry is not None:
            entries[entry["neuron"]] = entry
        offset += len(line)
    return entries


def _entry(line: bytes) -> dict | None:
    """The neuron's entry on a whole line (newline included); None for anything else."""
    if not line.endswith(b"\n"):
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and "neuron" in entry else None


def _drop_partial_line(path: Path, length: int, repair: bool) -> None:
    if repair:
        os.truncate(path, length)
        print(f"interp: {path} ended in a partial line (its run was stopped while writing "
              "it); cut it off, its neuron is redone", flush=True)
    else:
        print(f"warning: {path} ends in a partial line (its run was stopped while writing "
              "it); read without it", flush=True)


def _complete(neurons: list[NeuronRecord], work: Callable[[NeuronRecord], dict], path: Path,
              redo: Callable[[dict], bool], workers: int) -> dict[int, dict]:
    """Runs `work` on the neurons not yet in `path` or whose entry `redo` says to redo,
    appending each entry to `path` as it finishes; returns every neuron's (last) entry."""
    done = read_neuron_lines(path, repair=True)
    _report_repeated_neurons(path, redo)
    todo = [n for n in neurons if n.neuron_id.neuron_index not in done
            or redo(done[n.neuron_id.neuron_index])]
    if not todo:
        return done
    # One open file per layer, each entry flushed as it finishes: what a stopped run has done
    # is on disk (opening the file per entry was about 2% of a run's interp stage, sampled).
    with open(path, "a") as file:
        for entry in map_in_threads(work, todo, workers, as_completed=True):
            file.write(json.dumps(entry) + "\n")
            file.flush()
            done[entry["neuron"]] = entry
    return done


def _report_repeated_neurons(path: Path, redo: Callable[[dict], bool]) -> None:
    """Says so when a neuron has a line after one that needed no redo: one process never
    writes that, two on the same workdir at once (before runs locked it) did. The last line of
    each neuron is the one used, as for a redone neuron."""
    if not path.exists():
        return
    finished, repeated = set(), set()
    for line in path.read_bytes().splitlines(keepends=True):
        entry = _entry(line)
        if entry is None:
            continue
        if entry["neuron"] in finished:
            repeated.add(entry["neuron"])
        if not redo(entry):
            finished.add(entry["neuron"])
    if repeated:
        print(f"interp: {path} holds {len(repeated)} neurons written again after a finished "
              "line (two runs wrote this workdir at once, before runs locked it); the last "
              "line of each is used. Delete the file to redo the layer from scratch",
              flush=True)


def explanation_failed(entry: dict) -> bool:
    """Whether either protocol's explanation of this `explanations.jsonl` entry failed."""
    return any("failure" in entry.get(protocol, {}) for protocol in PROTOCOLS)


def explain_layer(neurons: list[NeuronRecord], explainer: Explainer, out_dir: Path,
                  workers: int = 1, *, record_protocol: str = "default",
                  retry_failed: bool = False,
                  protocols: tuple[str, ...] = PROTOCOLS) -> dict[int, dict]:
    """Explanations of every neuron (by each of `protocols`), reusing those already on file
    (except failed ones with `retry_failed`).

    `record_protocol` (`interp.protocol`) picks the records each explanation is shown
    (see `splits`)."""

    def explain(neuron: NeuronRecord) -> dict:
        index = neuron.neuron_id.neuron_index
        entry = {"neuron": index}
        for protocol in protocols:
            records = explanation_records(neuron, protocol, record_protocol)
            try:
                explanation = explainer.explain(records, max_activation(records))
                entry[protocol] = dataclasses.asdict(explanation)
            except SimulationFailure as failure:
                entry[protocol] = {"failure": str(failure)}
        return entry

    redo = explanation_failed if retry_failed else _never
    return _complete(neurons, explain, LayerScoresLayout(out_dir).explanations, redo, workers)


def baseline_partners(indices: list[int], seed: int, layer: int) -> dict[int, int]:
    """Each neuron's random-baseline partner: the next neuron in a seeded cyclic order, so no
    neuron is ever given its own explanation (with at least two neurons)."""
    order = np.random.default_rng([seed, layer]).permutation(sorted(indices)).tolist()
    return {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}


def _simulate_and_score(explanation_entry: dict, groups: dict[str, list[ActivationRecord]],
                        simulator: Simulator, protocol: str) -> tuple[dict, dict, dict]:
    """(scores by split, failures by split, simulations by group) of one protocol."""
    splits = protocol_splits(protocol)
    needed = sorted({g for s in splits for g in split_groups()[s]})
    if "failure" in explanation_entry:
        return {}, {s: f"explanation failed: {explanation_entry['failure']}"
                    for s in splits}, {}
    explanation = Explanation(**explanation_entry)
    try:
        simulated = {g: simulator.simulate(explanation, [shown_tokens(r) for r in groups[g]])
                     for g in needed}
    except SimulationFailure as failure:
        return {}, {s: str(failure) for s in splits}, {}
    scores = split_scores(groups, simulated, splits)
    # Stored unrounded, so a score can be recomputed exactly from the file.
    return scores, {}, {g: [list(map(float, seq)) for seq in simulated[g]] for g in needed}


def _judged(judge: Judge | None, explanation_entry: dict,
            cases: JudgementCases) -> tuple[dict, dict]:
    """(scores, failures) of detection and fuzzing for the OpenAI-protocol explanation."""
    if judge is None:
        return {}, {}
    if "failure" in explanation_entry:
        return {}, {s: f"explanation failed: {explanation_entry['failure']}"
                    for s in JUDGED_SCORES}
    try:
        return judge_scores(judge, Explanation(**explanation_entry), cases), {}
    except SimulationFailure as failure:
        return {}, {s: str(failure) for s in JUDGED_SCORES}


def score_layer(neurons: list[NeuronRecord], explanations: dict[int, dict],
                simulator: Simulator, out_dir: Path, *, random_baseline: bool, seed: int,
                layer: int, workers: int = 1, record_protocol: str = "default",
                retry_failed: bool = False,
                reference: TokenReference | None = None,
                judge: Judge | None = None,
                protocols: tuple[str, ...] = PROTOCOLS,
                cases: dict[int, JudgementCases] | None = None) -> dict[int, dict]:
    """Scores of every neuron (and of the random baseline, and the token reference's where a
    `reference` is given: `token_reference_scores`), reusing those already on file. With a
    `judge`, detection and fuzzing of the OpenAI-protocol explanation join the scores
    (`judging`), on each neuron's cases from `cases` (filled here where missing: a caller
    that scores several explainers passes one dict, so the cases are built once). Only the
    splits of `protocols` are scored (their explanations must be on file).

    With `retry_failed`, a neuron is rescored when a split of its own failed or when its random
    baseline lacks a split (the partner's explanation or a baseline simulation failed): a
    redone explanation always shows as one of these. `record_protocol` (`interp.protocol`)
    picks the held-out records each split pools."""
    partners = baseline_partners([n.neuron_id.neuron_index for n in neurons], seed, layer)
    with_baseline = random_baseline and len(partners) > 1

    cases = {} if cases is None else cases
    scored = ({split for protocol in protocols for split in protocol_splits(protocol)}
              | (set(JUDGED_SCORES) if judge is not None else set()))

    def failed(entry: dict) -> bool:
        return bool(entry["failures"]) or (
            with_baseline and set(entry.get("baseline_scores", {})) != scored)

    def score(neuron: NeuronRecord) -> dict:
        index = neuron.neuron_id.neuron_index
        groups = {protocol: held_out_records(neuron, protocol, record_protocol)
                  for protocol in protocols}
        entry = {"neuron": index, "scores": {}, "failures": {}, "simulations": {},
                 "explanation": explanations[index].get("openai", {}).get("text")}
        for protocol in protocols:
            scores, failures, simulations = _simulate_and_score(
                explanations[index][protocol], groups[protocol], simulator, protocol)
            entry["scores"].update(scores)
            entry["failures"].update(failures)
            entry["simulations"][protocol] = simulations
        if judge is not None and index not in cases:
            cases[index] = judgement_cases(neuron, record_protocol, seed)
        judged, failures = _judged(judge, explanations[index]["openai"], cases.get(index))
        entry["scores"].update(judged)
        entry["failures"].update(failures)
        if with_baseline:
            partner = partners[index]
            baseline = {}
            for protocol in protocols:
                scores, _, _ = _simulate_and_score(explanations[partner][protocol],
                                                   groups[protocol], simulator, protocol)
                baseline.update(scores)
            baseline.update(_judged(judge, explanations[partner]["openai"],
                                    cases.get(index))[0])
            entry["baseline_partner"] = partner
            entry["baseline_scores"] = baseline
        if reference is not None:
            entry["token_reference_scores"] = reference.scores(neuron, record_protocol)
        entry["scores"] = {k: (None if math.isnan(v) else v) for k, v in entry["scores"].items()}
        if "baseline_scores" in entry:
            entry["baseline_scores"] = {k: (None if math.isnan(v) else v)
                                        for k, v in entry["baseline_scores"].items()}
        return entry

    redo = failed if retry_failed else _never
    return _complete(neurons, score, LayerScoresLayout(out_dir).scores, redo, workers)


def _never(entry: dict) -> bool:
    return False
