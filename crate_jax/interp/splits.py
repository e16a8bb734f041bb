"""Which records explain a neuron and which score it, for the two protocols the paper reports.

OpenAI (Bills et al. 2023): records alternate between explanation and held-out use (even
positions explain, odd positions are held out), so both halves span the whole activation range.
The explanation sees top records only; scores are computed on held-out top + random records
("top-and-random"), random records alone ("random-only") and top records alone ("top-only").

Anthropic-style: the explanation also sees records from every activation-quantile bin and random
records; the score pools held-out top, bin and random records, plus 3-token snippets around each
held-out top record's peak shown without their context (their true activations are the in-context
ones, so an explanation that leans on context is penalised, as in Anthropic's method).
"""

from __future__ import annotations

from crate_jax.interp.records import ActivationRecord, NeuronRecord

OPENAI_SPLITS = ("top_and_random", "random_only", "top_only")
ANTHROPIC_SPLIT = "anthropic"
SNIPPET_RADIUS = 1  # tokens either side of the peak: 3-token snippets


def _explanation_half(records: list[ActivationRecord]) -> list[ActivationRecord]:
    return records[0::2]


def _held_out_half(records: list[ActivationRecord]) -> list[ActivationRecord]:
    return records[1::2]


def openai_explanation_records(neuron: NeuronRecord) -> list[ActivationRecord]:
    return _explanation_half(neuron.most_positive_activation_records)


def anthropic_explanation_records(neuron: NeuronRecord) -> list[ActivationRecord]:
    bins = [r for bin_records in (neuron.random_sample_by_quantile or [])
            for r in _explanation_half(bin_records)]
    return (_explanation_half(neuron.most_positive_activation_records) + bins
            + _explanation_half(neuron.random_sample))


def peak_snippet(record: ActivationRecord, radius: int = SNIPPET_RADIUS) -> ActivationRecord:
    """The tokens around the record's largest activation (first one on ties), out of context."""
    peak = max(range(len(record.activations)), key=lambda i: (record.activations[i], -i))
    start, stop = max(0, peak - radius), min(len(record.tokens), peak + radius + 1)
    return ActivationRecord(tokens=record.tokens[start:stop],
                            activations=record.activations[start:stop])


def held_out_records(neuron: NeuronRecord) -> dict[str, list[ActivationRecord]]:
    """The held-out record groups every split is built from (each simulated once)."""
    top = _held_out_half(neuron.most_positive_activation_records)
    return {
        "top": top,
        "random": _held_out_half(neuron.random_sample),
        "bins": [r for bin_records in (neuron.random_sample_by_quantile or [])
                 for r in _held_out_half(bin_records)],
        "snippets": [peak_snippet(r) for r in top],
    }


def split_groups() -> dict[str, tuple[str, ...]]:
    """Each scored split as the held-out groups it pools."""
    return {"top_and_random": ("top", "random"), "random_only": ("random",),
            "top_only": ("top",), ANTHROPIC_SPLIT: ("top", "bins", "random", "snippets")}
