"""Which records explain a neuron and which score it, for the two protocols the paper reports.

OpenAI-style (`openai`, after Bills et al. 2023): the explanation sees top records only; scores
are computed on held-out top + random records ("top_and_random"), random records alone
("random_only") and top records alone ("top_only"). `interp.protocol` chooses its records:

* `default` (this codebase's, uses every mined record): top and random records alternate between
  explanation and held-out use (even ranks explain, odd ranks are held out), so both halves span
  the whole activation range: explain from top[0::2]; score on top[1::2] and random[1::2].
* `paper` (Bai & Ma 2024, exactly): explain from top[0:10:2]; score top-and-random on
  top[1:10:2] + random[0:10:2], random-only on random[0:10:2] (top-only on top[1:10:2]).

Neither is the split of OpenAI's released neuron-explainer: it interleaves the top records four
ways (train, calibration, valid, test = top[0::4], top[1::4], top[2::4], top[3::4]) and the random
records three ways (calibration, valid, test = random[0::3], random[1::3], random[2::3]), each
cut to `n_examples_per_split` records; explanations come from train and the top-and-random score
from valid (their demo, n = 5: explain from top[0:20:4], score on top[2:20:4] + random[1:15:3]).

Anthropic-style (`anthropic`, the same under both `interp.protocol`s): the explanation also sees
the even half of every activation-quantile bin and of the random records; the score pools
held-out top records, the bins' and random records' odd halves, and 3-token snippets around the
peaks of other held-out top records, shown without their context (their true activations are the
in-context ones, so an explanation that leans on context is penalised, as in Anthropic's method).
The held-out top records (top[1::2]) are shared out: top[1::4] are scored in context, top[3::4]
give the snippets, so no record is scored both in and out of context.
"""

from __future__ import annotations

from crate_jax.interp.activations.records import ActivationRecord, NeuronRecord
from crate_jax.model import ConfigError

PROTOCOLS = ("openai", "anthropic")
OPENAI_SPLITS = ("top_and_random", "random_only", "top_only")
ANTHROPIC_SPLIT = "anthropic"
# The protocol whose explanation and held-out records each scored split uses.
PROTOCOL_OF_SPLIT = {**dict.fromkeys(OPENAI_SPLITS, "openai"), ANTHROPIC_SPLIT: "anthropic"}
RECORD_PROTOCOLS = ("default", "paper")
PAPER_TOP_RECORDS = 10     # the paper's splits use top[0:10] ...
PAPER_RANDOM_RECORDS = 10  # ... and random[0:10]
SNIPPET_RADIUS = 1  # tokens either side of the peak: 3-token snippets


def check_record_protocol(record_protocol: str, top_k: int, random_k: int) -> None:
    """Raises `ConfigError` for an unknown `interp.protocol` or too few records for it."""
    if record_protocol not in RECORD_PROTOCOLS:
        raise ConfigError(f"interp.protocol={record_protocol!r} is not one of "
                          f"{', '.join(RECORD_PROTOCOLS)}")
    if record_protocol == "paper" and (top_k < PAPER_TOP_RECORDS
                                       or random_k < PAPER_RANDOM_RECORDS):
        raise ConfigError(f"interp.protocol='paper' needs interp.top_k >= {PAPER_TOP_RECORDS} "
                          f"and interp.random_k >= {PAPER_RANDOM_RECORDS}; got top_k={top_k}, "
                          f"random_k={random_k}")


def protocol_splits(protocol: str) -> list[str]:
    """The splits scored on `protocol`'s held-out records."""
    return [split for split, owner in PROTOCOL_OF_SPLIT.items() if owner == protocol]


def _even(records: list[ActivationRecord]) -> list[ActivationRecord]:
    return records[0::2]


def _odd(records: list[ActivationRecord]) -> list[ActivationRecord]:
    return records[1::2]


def explanation_records(neuron: NeuronRecord, protocol: str,
                        record_protocol: str = "default") -> list[ActivationRecord]:
    """The records the explainer of `protocol` ('openai' or 'anthropic') is shown."""
    top = neuron.most_positive_activation_records
    if protocol == "openai":
        return top[0:PAPER_TOP_RECORDS:2] if record_protocol == "paper" else _even(top)
    bins = [r for bin_records in (neuron.random_sample_by_quantile or [])
            for r in _even(bin_records)]
    return _even(top) + bins + _even(neuron.random_sample)


def peak_snippet(record: ActivationRecord, radius: int = SNIPPET_RADIUS) -> ActivationRecord:
    """The tokens around the record's largest activation (first one on ties), out of context."""
    peak = max(range(len(record.activations)), key=lambda i: (record.activations[i], -i))
    start, stop = max(0, peak - radius), min(len(record.tokens), peak + radius + 1)
    return ActivationRecord(tokens=record.tokens[start:stop],
                            activations=record.activations[start:stop],
                            start=None if record.start is None else record.start + start)


def held_out_records(neuron: NeuronRecord, protocol: str,
                     record_protocol: str = "default") -> dict[str, list[ActivationRecord]]:
    """The held-out record groups `protocol`'s splits are built from (each simulated once)."""
    top, random = neuron.most_positive_activation_records, neuron.random_sample
    if protocol == "openai":
        if record_protocol == "paper":
            return {"top": top[1:PAPER_TOP_RECORDS:2], "random": random[0:PAPER_RANDOM_RECORDS:2]}
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
