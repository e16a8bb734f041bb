"""Which records explain a neuron and which score it, for the two protocols the paper reports.

OpenAI (Bills et al. 2023): records alternate between explanation and held-out use (even
positions explain, odd positions are held out), so both halves span the whole activation range.
The explanation sees top records only; scores are computed on held-out top + random records
("top-and-random"), random records alone ("random-only") and top records alone ("top-only").

Anthropic-style: the explanation also sees the even half of every activation-quantile bin and of
the random records; the score pools held-out top records, the bins' and random records' odd
halves, and 3-token snippets around the peaks of other held-out top records, shown without their
context (their true activations are the in-context ones, so an explanation that leans on context
is penalised, as in Anthropic's method).
The held-out top records (top[1::2]) are shared out: top[1::4] are scored in context, top[3::4]
give the snippets, so no record is scored both in and out of context.
"""

from __future__ import annotations

from crate_jax.interp.records import ActivationRecord, NeuronRecord

OPENAI_SPLITS = ("top_and_random", "random_only", "top_only")
ANTHROPIC_SPLIT = "anthropic"
SNIPPET_RADIUS = 1  # tokens either side of the peak: 3-token snippets


def _even(records: list[ActivationRecord]) -> list[ActivationRecord]:
    return records[0::2]


def _odd(records: list[ActivationRecord]) -> list[ActivationRecord]:
    return records[1::2]


def explanation_records(neuron: NeuronRecord, protocol: str) -> list[ActivationRecord]:
    """The records the explainer of `protocol` ('openai' or 'anthropic') is shown."""
    top = neuron.most_positive_activation_records
    if protocol == "openai":
        return _even(top)
    bins = [r for bin_records in (neuron.random_sample_by_quantile or [])
            for r in _even(bin_records)]
    return _even(top) + bins + _even(neuron.random_sample)


def peak_snippet(record: ActivationRecord, radius: int = SNIPPET_RADIUS) -> ActivationRecord:
    """The tokens around the record's largest activation (first one on ties), out of context."""
    peak = max(range(len(record.activations)), key=lambda i: (record.activations[i], -i))
    start, stop = max(0, peak - radius), min(len(record.tokens), peak + radius + 1)
    return ActivationRecord(tokens=record.tokens[start:stop],
                            activations=record.activations[start:stop])


def held_out_records(neuron: NeuronRecord, protocol: str) -> dict[str, list[ActivationRecord]]:
    """The held-out record groups `protocol`'s splits are built from (each simulated once)."""
    top, random = neuron.most_positive_activation_records, neuron.random_sample
    if protocol == "openai":
        return {"top": _odd(top), "random": _odd(random)}
    held_out_top = _odd(top)
    return {
        "top": _even(held_out_top),
        "random": _odd(random),
        "bins": [r for bin_records in (neuron.random_sample_by_quantile or [])
                 for r in _odd(bin_records)],
        "snippets": [peak_snippet(r) for r in _odd(held_out_top)],
    }


def split_groups() -> dict[str, tuple[str, ...]]:
    """Each scored split as the held-out groups (of its protocol) it pools."""
    return {"top_and_random": ("top", "random"), "random_only": ("random",),
            "top_only": ("top",), ANTHROPIC_SPLIT: ("top", "bins", "random", "snippets")}
