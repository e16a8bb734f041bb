"""Detection and fuzzing: delphi's yes/no scores of an explanation, for every explainer.

EleutherAI's delphi (Paulo et al. 2024, "Automatically Interpreting Millions of Features in
Large Language Models") scores an explanation by asking a judge, shown only the explanation:

- detection: "does the neuron fire here?", over activating contexts from every activation
  quantile and non-activating ones (random, and hard negatives); balanced accuracy, and AUROC
  where the judge's answer is graded;
- fuzzing: "are the highlighted tokens the ones it fires on?", over activating contexts with
  their firing tokens highlighted and the same contexts with as many other tokens highlighted;
  balanced accuracy.

Both are cheaper than simulation (one yes/no per context instead of a number per token) and
need no calibrated activations. Every context here is cut from the held-out records of the
OpenAI protocol (`splits.held_out_records`: top and random records the explanation did not
see) and from the quantile-bin records, which that explanation never sees; every record lies in
a sequence of its own (`miner`), so no judged token was shown to the explainer.

Definitions, and where they depart from delphi's (32-token contexts judged "anywhere in it",
50 activating contexts from 10 quantiles, 50 random non-activating ones, wrong fuzzing
highlights on random tokens):
- A token fires when its activation is at least `FIRING_SHARE` of the way from the neuron's
  mean (over the whole evaluation text) to the largest activation in the explanation records.
  Delphi's latents are SAE latents, exactly 0 when off; neurons are not (a residual coordinate
  is never 0), so "fires" needs a level, and measuring it from the mean is what the truth
  measure does too (`ground_truth`). A graded judge (a simulator, whose 0-10 scale puts 10 at
  that largest activation) says yes from the same level on its scale.
- Detection asks about one target token: the context is the `DETECTION_CONTEXT` tokens ending
  at it (what a causal model has read when it fires there). Delphi asks whether the latent
  fires anywhere in 32 tokens; for the planted corpus's frequent features (a determiner or noun
  every few tokens) almost no 32-token context is silent, so that question had no negatives:
  on a trained CRATE's ISTA code 62% of neurons, and 96% of its residual coordinates, had no
  non-activating context at all. Activating targets are the peaks of the held-out top and bin
  records (the bins span the activation range, as delphi's quantiles do), where they fire.
  Non-activating targets are drawn (seeded) from the held-out records' silent tokens: up to
  `NEGATIVES_PER_KIND` "hard" ones, whose token is one the neuron fires on in the explanation
  records (that token in another context: what a token list cannot reject), and as many
  "random" ones.
- Fuzzing keeps delphi's question on `CONTEXT_TOKENS` = 32-token windows around the peaks of
  the held-out top and bin records; wrong highlights are as many of the window's silent tokens
  as it has firing ones, drawn (seeded by seed, neuron and context).
- With 10 held-out top records and 20 bin records per neuron there are at most 30 activating
  targets and fuzzed contexts, fewer than delphi's 50; more would need more mined records.

Judges (`explanation.Judge`): an offline simulator is its own judge (`SimulatorJudge`: its
simulated activation on the target token, or on the highlighted ones); an LLM answers
delphi-style prompts (`llm_judge`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from crate_jax.interp.activations.records import (
    ActivationRecord,
    NeuronRecord,
    max_activation,
    shown_tokens,
)
from crate_jax.interp.explanations.explanation import (
    MAX_NORMALIZED_ACTIVATION,
    Explanation,
    Judge,
    Simulator,
)
from crate_jax.interp.explanations.splits import explanation_records, held_out_records

# Which contexts detection and fuzzing judge; `interp/inputs.json` carries it, so scores judged
# by an older rule are recomputed, not reused. 2: detection of one target token, firing measured
# from the neuron's mean (1: any token of a 32-token context, firing measured from 0).
JUDGING_VERSION = 2
CONTEXT_TOKENS = 32  # a fuzzed context
CONTEXT_BEFORE_PEAK = 24  # tokens of it before the peak: the model reads left to right
DETECTION_CONTEXT = 16  # a detection context: the target token and the 15 before it
FIRING_SHARE = 0.1  # of the way from the neuron's mean to its largest explained activation
NEGATIVES_PER_KIND = 25  # hard and random non-activating detection targets, at most
JUDGED_SCORES = ("detection", "detection_auroc", "fuzzing")


@dataclasses.dataclass(frozen=True)
class JudgedContext:
    """A context the judge sees (`record.tokens`, and `record.start` for the truth control),
    with the true activations it is judged against. `kind`: activating, random or hard."""

    record: ActivationRecord
    kind: str


class SimulatorJudge:
    """An offline simulator as a graded judge: detection is the simulated activation of the
    context's last token, fuzzing the mean simulated activation on the highlighted tokens; "yes"
    from the neuron's firing level on the simulator's 0-10 scale (`threshold` None)."""

    threshold = None
    graded = True

    def __init__(self, simulator: Simulator):
        self.simulator = simulator

    def detect(self, explanation: Explanation, contexts) -> list[float]:
        simulated = self.simulator.simulate(explanation, contexts)
        return [values[-1] if len(values) else 0.0 for values in simulated]

    def fuzz(self, explanation: Explanation, contexts, highlighted) -> list[float]:
        # A context shown with right and with wrong highlights is one object: simulate it once.
        distinct = list({id(context): context for context in contexts}.values())
        simulated = dict(zip(map(id, distinct),
                             map(np.asarray, self.simulator.simulate(explanation, distinct)),
                             strict=True))
        return [float(simulated[id(context)][np.asarray(marks, bool)].mean())
                if any(marks) else 0.0
                for context, marks in zip(contexts, highlighted, strict=True)]


def firing_level(neuron: NeuronRecord, record_protocol: str) -> tuple[float, float]:
    """`(activation, level on the explanation's 0-10 scale)` from which a token fires (module
    docstring); both inf when the explanation records never rise above the neuron's mean."""
    scale = max_activation(explanation_records(neuron, "openai", record_protocol))
    mean = neuron.mean if neuron.mean is not None and math.isfinite(neuron.mean) else 0.0
    if scale <= mean or scale <= 0:
        return math.inf, math.inf
    level = mean + FIRING_SHARE * (scale - mean)
    return level, MAX_NORMALIZED_ACTIVATION * level / scale


def judged_contexts(neuron: NeuronRecord, record_protocol: str,
                    seed: int) -> list[JudgedContext]:
    """Detection's contexts for `neuron` (module docstring): each ends at its target token;
    activating ones first, then hard, then random, in a fixed order."""
    level, _ = firing_level(neuron, record_protocol)
    explained = explanation_records(neuron, "openai", record_protocol)
    fired_on = {token for record in explained
                for token, value in zip(record.tokens, record.activations, strict=True)
                if value >= level}
    peaked, random = _judged_records(neuron, record_protocol)
    contexts = []
    for record in peaked:
        if record.activations and max(record.activations) >= level:
            contexts.append(JudgedContext(_ending_at(record, int(np.argmax(record.activations))),
                                          "activating"))
    silent: dict[str, list[tuple[ActivationRecord, int]]] = {"hard": [], "random": []}
    for record in peaked + random:
        # Targets with a full context before them, where the neuron is silent.
        quiet = np.flatnonzero(np.asarray(record.activations[DETECTION_CONTEXT - 1:])
                               < level) + DETECTION_CONTEXT - 1
        for position in quiet.tolist():
            kind = "hard" if record.tokens[position] in fired_on else "random"
            silent[kind].append((record, position))
    rng = np.random.default_rng([seed, neuron.neuron_id.neuron_index])
    for kind in ("hard", "random"):
        chosen = rng.permutation(len(silent[kind]))[:NEGATIVES_PER_KIND]
        for k in np.sort(chosen).tolist():  # in the records' order
            record, position = silent[kind][k]
            contexts.append(JudgedContext(_ending_at(record, position), kind))
    return contexts


@dataclasses.dataclass(frozen=True)
class JudgementCases:
    """What a judge is asked about one neuron, and the true answers: the same for every
    explanation of it (its own, another neuron's, every explainer's), so built once.
    `detection`: contexts ending at their target; `fuzzing`: contexts with `marks`;
    `scale_level`: the firing level on the explanation's 0-10 scale."""

    detection: list
    detection_truth: np.ndarray  # [contexts] bool: the target fires
    fuzzing: list
    marks: list[list[bool]]
    fuzzing_truth: np.ndarray  # [contexts] bool: the marks are the firing tokens
    scale_level: float


def judgement_cases(neuron: NeuronRecord, record_protocol: str, seed: int) -> JudgementCases:
    """Detection's and fuzzing's cases for `neuron` (module docstring)."""
    level, scale_level = firing_level(neuron, record_protocol)
    contexts = judged_contexts(neuron, record_protocol, seed)
    shown, marks, truth = [], [], []
    for number, window in enumerate(fuzzed_windows(neuron, record_protocol, level)):
        fires = np.asarray(window.activations) >= level
        quiet = np.flatnonzero(~fires)
        rng = np.random.default_rng([seed, neuron.neuron_id.neuron_index, number])
        wrong = np.zeros_like(fires)
        wrong[rng.permutation(quiet)[:int(fires.sum())]] = True
        tokens = shown_tokens(window)  # one object for both highlights: simulated once
        for highlighted, correct in ((fires, True), (wrong, False)):
            if highlighted.any():
                shown.append(tokens)
                marks.append(highlighted.tolist())
                truth.append(correct)
    return JudgementCases(
        detection=[shown_tokens(c.record) for c in contexts],
        detection_truth=np.asarray([c.kind == "activating" for c in contexts], bool),
        fuzzing=shown, marks=marks, fuzzing_truth=np.asarray(truth, bool),
        scale_level=scale_level)


def judge_scores(judge: Judge, explanation: Explanation,
                 cases: JudgementCases) -> dict[str, float]:
    """`{detection, detection_auroc, fuzzing}` of one explanation on a neuron's `cases`; NaN
    where a score is undefined (no activating or no silent case; AUROC of a yes/no judge).
    Raises what the judge raises (`SimulationFailure`, `BackendError`)."""
    threshold = cases.scale_level if judge.threshold is None else judge.threshold
    detected = (np.asarray(judge.detect(explanation, cases.detection), np.float64)
                if cases.detection else np.zeros(0))
    fuzzed = (np.asarray(judge.fuzz(explanation, cases.fuzzing, cases.marks), np.float64)
              if cases.fuzzing else np.zeros(0))
    return {"detection": balanced_accuracy(detected >= threshold, cases.detection_truth),
            "detection_auroc": (auroc(detected, cases.detection_truth)
                                if judge.graded else math.nan),
            "fuzzing": balanced_accuracy(fuzzed >= threshold, cases.fuzzing_truth)}


def fuzzed_windows(neuron: NeuronRecord, record_protocol: str,
                   level: float) -> list[ActivationRecord]:
    """Fuzzing's contexts: the `CONTEXT_TOKENS`-token window around the peak of each held-out
    top and bin record whose peak fires."""
    peaked, _ = _judged_records(neuron, record_protocol)
    return [_peak_window(record) for record in peaked
            if record.activations and max(record.activations) >= level]


def balanced_accuracy(said_yes: np.ndarray, is_yes: np.ndarray) -> float:
    """(true positive rate + true negative rate) / 2; NaN without both kinds of case."""
    if not is_yes.any() or is_yes.all():
        return math.nan
    return float((said_yes[is_yes].mean() + (~said_yes[~is_yes]).mean()) / 2)


def auroc(values: np.ndarray, is_yes: np.ndarray) -> float:
    """P(a yes case's value > a no case's), ties counted half; NaN without both kinds."""
    yes, no = values[is_yes], values[~is_yes]
    if not yes.size or not no.size:
        return math.nan
    # All pairs: a few dozen cases a side, faster than ranking.
    return float(((yes[:, None] > no[None, :]).sum() + 0.5 * (yes[:, None] == no[None, :]).sum())
                 / (yes.size * no.size))


def _judged_records(neuron: NeuronRecord,
                    record_protocol: str) -> tuple[list[ActivationRecord], list[ActivationRecord]]:
    """(held-out top and bin records, whose peaks are the activating cases; held-out random
    records): every record the judge's cases are cut from, none shown to the explanation."""
    held = held_out_records(neuron, "openai", record_protocol)
    bins = [record for records in (neuron.random_sample_by_quantile or [])
            for record in records]
    return held["top"] + bins, held["random"]


def _slice(record: ActivationRecord, start: int, stop: int) -> ActivationRecord:
    return ActivationRecord(tokens=record.tokens[start:stop],
                            activations=record.activations[start:stop],
                            start=None if record.start is None else record.start + start)


def _peak_window(record: ActivationRecord) -> ActivationRecord:
    """`CONTEXT_TOKENS` tokens of the record around its peak (first on ties), the peak with
    `CONTEXT_BEFORE_PEAK` tokens before it where the record allows."""
    if not record.activations:
        return record
    peak = int(np.argmax(record.activations))
    start = min(max(0, peak - CONTEXT_BEFORE_PEAK), max(0, len(record.tokens) - CONTEXT_TOKENS))
    return _slice(record, start, start + CONTEXT_TOKENS)


def _ending_at(record: ActivationRecord, position: int) -> ActivationRecord:
    """The `DETECTION_CONTEXT` tokens of the record that end at `position` (fewer near its
    start)."""
    return _slice(record, max(0, position + 1 - DETECTION_CONTEXT), position + 1)
