"""Detection and fuzzing: delphi's yes/no scores of an explanation, for every explainer.

EleutherAI's delphi (Paulo et al. 2024, "Automatically Interpreting Millions of Features in
Large Language Models") scores an explanation by asking a judge, shown only the explanation:

- detection: "does the neuron fire anywhere in this context?", over activating contexts from
  every activation quantile and non-activating ones; balanced accuracy (and AUROC where the
  judge's answer is graded);
- fuzzing: "are the highlighted tokens the ones it fires on?", over activating contexts with
  their firing tokens highlighted and the same contexts with as many other tokens highlighted;
  balanced accuracy.

Both are cheaper than simulation (one yes/no per context instead of a number per token) and
need no calibrated activations. Here every context is cut from the held-out records of the
OpenAI protocol (`splits.held_out_records`: top and random records the explanation did not
see) and from the quantile-bin records, which that explanation never sees; every record lies in
a sequence of its own (`miner`), so no judged token was shown to the explainer.

Definitions, and where they depart from delphi's defaults (32-token contexts, 50 activating
contexts drawn from 10 quantiles, 50 random non-activating ones, wrong highlights on random
tokens):
- A token fires when its activation is at least `FIRING_LEVEL` on the explanation's 0-10 scale
  (10 = the largest activation in the explanation records): the level from which OpenAI's
  discretisation shows it as non-zero. Delphi's latents are SAE latents, exactly 0 when off;
  neurons are not, so "fires" needs a level, and this one is the scale every explainer and
  simulator here already speaks.
- Contexts are `CONTEXT_TOKENS` = 32 tokens (delphi's). An activating context is the window of a
  held-out top or bin record around its peak (`CONTEXT_BEFORE_PEAK` tokens before it, as the
  model reads left to right), kept if the peak fires; the bins span the activation range as
  delphi's quantiles do. Non-activating contexts are the two 32-token halves of every held-out
  record in which no token fires: "hard" where one holds a token the neuron fires on in the
  explanation records (that token in another context: the negatives a token list cannot
  reject), "random" otherwise. Every context is used, none sampled: with 20 held-out records and
  20 bin records per neuron there are about 30 activating and 30-60 non-activating contexts,
  fewer than delphi's 50 + 50; more would need more mined records.
- Wrong fuzzing highlights: as many tokens as the context has firing ones, drawn (seeded by
  seed, neuron and context) from its non-firing tokens.

Judges (`explanation.Judge`): an offline simulator is its own judge (`SimulatorJudge`: the
largest simulated activation in a context, "yes" from `FIRING_LEVEL`); an LLM answers
delphi-style prompts (`llm_judge`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

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

CONTEXT_TOKENS = 32
CONTEXT_BEFORE_PEAK = 24
FIRING_LEVEL = 1.0
JUDGED_SCORES = ("detection", "detection_auroc", "fuzzing")


@dataclasses.dataclass(frozen=True)
class JudgedContext:
    """A context the judge sees (`record.tokens`, and `record.start` for the truth control),
    with the true activations it is judged against. `kind`: activating, random or hard."""

    record: ActivationRecord
    kind: str


class SimulatorJudge:
    """An offline simulator as a graded judge: detection is the largest simulated activation
    in the context, fuzzing the mean simulated activation on the highlighted tokens; "yes"
    from `FIRING_LEVEL`, the level at which a token counts as firing."""

    threshold = FIRING_LEVEL
    graded = True

    def __init__(self, simulator: Simulator):
        self.simulator = simulator

    def detect(self, explanation: Explanation, contexts) -> list[float]:
        simulated = self.simulator.simulate(explanation, contexts)
        return [max(values, default=0.0) for values in simulated]

    def fuzz(self, explanation: Explanation, contexts, highlighted) -> list[float]:
        simulated = self.simulator.simulate(explanation, contexts)
        return [float(np.mean([v for v, marked in zip(values, marks, strict=True) if marked]))
                if any(marks) else 0.0
                for values, marks in zip(simulated, highlighted, strict=True)]


def firing_level(neuron: NeuronRecord, record_protocol: str) -> float:
    """The activation from which a token fires: `FIRING_LEVEL` on the 0-10 scale of the
    explanation records (inf when they never exceed 0: nothing fires)."""
    scale = max_activation(explanation_records(neuron, "openai", record_protocol))
    return FIRING_LEVEL * scale / MAX_NORMALIZED_ACTIVATION if scale > 0 else math.inf


def judged_contexts(neuron: NeuronRecord, record_protocol: str) -> list[JudgedContext]:
    """Detection's contexts for `neuron` (module docstring), in a fixed order."""
    level = firing_level(neuron, record_protocol)
    explained = explanation_records(neuron, "openai", record_protocol)
    fired_on = {token for record in explained
                for token, value in zip(record.tokens, record.activations, strict=True)
                if value >= level}
    held = held_out_records(neuron, "openai", record_protocol)
    bins = [record for records in (neuron.random_sample_by_quantile or [])
            for record in records]
    contexts = []
    for record in held["top"] + bins:
        window = _peak_window(record)
        if window.activations and max(window.activations) >= level:
            contexts.append(JudgedContext(window, "activating"))
    for record in held["top"] + bins + held["random"]:
        for half in _pieces(record):
            if half.activations and max(half.activations) < level:
                kind = "hard" if fired_on.intersection(half.tokens) else "random"
                contexts.append(JudgedContext(half, kind))
    return contexts


def judge_scores(judge: Judge, explanation: Explanation, neuron: NeuronRecord,
                 record_protocol: str, seed: int) -> dict[str, float]:
    """`{detection, detection_auroc, fuzzing}` of one explanation of `neuron`; NaN where a
    score is undefined (no activating or no non-activating context; AUROC of a yes/no judge).
    Raises what the judge raises (`SimulationFailure`, `BackendError`)."""
    contexts = judged_contexts(neuron, record_protocol)
    firing = np.asarray([c.kind == "activating" for c in contexts], bool)
    values = np.asarray(judge.detect(explanation, [shown_tokens(c.record) for c in contexts]),
                        np.float64) if contexts else np.zeros(0)
    result = {"detection": balanced_accuracy(values >= judge.threshold, firing),
              "detection_auroc": (auroc(values, firing) if getattr(judge, "graded", False)
                                  else math.nan)}
    level = firing_level(neuron, record_protocol)
    shown, marks, truth = [], [], []
    for number, context in enumerate(c for c in contexts if c.kind == "activating"):
        fires = np.asarray(context.record.activations) >= level
        quiet = np.flatnonzero(~fires)
        rng = np.random.default_rng([seed, neuron.neuron_id.neuron_index, number])
        wrong = np.zeros_like(fires)
        wrong[rng.permutation(quiet)[:int(fires.sum())]] = True
        for highlighted, correct in ((fires, True), (wrong, False)):
            if highlighted.any():
                shown.append(shown_tokens(context.record))
                marks.append(highlighted.tolist())
                truth.append(correct)
    fuzzed = (np.asarray(judge.fuzz(explanation, shown, marks), np.float64) if shown
              else np.zeros(0))
    result["fuzzing"] = balanced_accuracy(fuzzed >= judge.threshold, np.asarray(truth, bool))
    return result


def balanced_accuracy(said_yes: np.ndarray, is_yes: np.ndarray) -> float:
    """(true positive rate + true negative rate) / 2; NaN without both kinds of case."""
    if not is_yes.any() or is_yes.all():
        return math.nan
    return float((said_yes[is_yes].mean() + (~said_yes[~is_yes]).mean()) / 2)


def auroc(values: np.ndarray, is_yes: np.ndarray) -> float:
    """P(a yes case's value > a no case's), ties counted half; NaN without both kinds."""
    positives, negatives = int(is_yes.sum()), int((~is_yes).sum())
    if not positives or not negatives:
        return math.nan
    ranks = stats.rankdata(values)
    return float((ranks[is_yes].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))


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


def _pieces(record: ActivationRecord) -> list[ActivationRecord]:
    """The record cut into consecutive `CONTEXT_TOKENS`-token contexts (the last may be
    shorter)."""
    return [_slice(record, start, start + CONTEXT_TOKENS)
            for start in range(0, len(record.tokens), CONTEXT_TOKENS)]
