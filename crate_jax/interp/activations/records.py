"""Activation records per neuron, in the layout of OpenAI's neuron-explainer (`NeuronRecord`).

A record is a window of tokens with one neuron's activation on each token. Keeping OpenAI's
field names (and their `dataclass_name` tags in JSON) lets their explainer/simulator tools read
our records unchanged, and ours read theirs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np


@dataclasses.dataclass
class ActivationRecord:
    """`tokens[i]` (decoded text of one token) and the neuron's activation on it.

    `start`, where known, is the position of `tokens[0]` in the evaluation text (row-major over
    its sequences). It is not one of OpenAI's fields, so it is not written with the record (it
    lives in `layer_<l>_positions.npz`, see `attach_starts`).
    """

    tokens: list[str]
    activations: list[float]
    start: int | None = dataclasses.field(default=None, metadata={"json": False})


@dataclasses.dataclass
class NeuronId:
    layer_index: int
    neuron_index: int


@dataclasses.dataclass
class NeuronRecord:
    """Everything mined for one neuron. Quantile bins hold the Anthropic-style samples."""

    neuron_id: NeuronId
    random_sample: list[ActivationRecord] = dataclasses.field(default_factory=list)
    random_sample_by_quantile: list[list[ActivationRecord]] | None = None
    quantile_boundaries: list[float] | None = None
    mean: float | None = math.nan
    variance: float | None = math.nan
    skewness: float | None = math.nan
    kurtosis: float | None = math.nan
    most_positive_activation_records: list[ActivationRecord] = dataclasses.field(
        default_factory=list)
    most_negative_activation_records: list[ActivationRecord] = dataclasses.field(
        default_factory=list)

    @property
    def max_activation(self) -> float:
        """The largest activation among all top records, held-out ones included (for display;
        explanations are scaled by `max_activation(records)` of their own records)."""
        return max_activation(self.most_positive_activation_records)


class ShownTokens(list):
    """A record's tokens as a simulator or judge is given them: a list of token texts, plus
    the evaluation-text position of the first (`start`, None where unknown). Only the truth
    control reads `start` (to look up the planted features of these tokens); every other
    backend sees a plain list of strings, and never the activations."""

    def __init__(self, tokens, start: int | None = None):
        super().__init__(tokens)
        self.start = start


def shown_tokens(record: ActivationRecord) -> ShownTokens:
    return ShownTokens(record.tokens, record.start)


def attach_starts(neurons: list[NeuronRecord], positions: dict[str, np.ndarray]) -> None:
    """Sets `start` on every record of `neurons` from a `layer_<l>_positions.npz`'s arrays:
    `neuron_index` `[N]`, `top` `[N, top_k]`, `random` `[N, random_k]`, `bins`
    `[N, bins, per_bin]`, each a start position or -1 for no record (the records lists skip
    those, in the same order)."""
    row = {int(n): k for k, n in enumerate(positions["neuron_index"])}
    for neuron in neurons:
        k = row[neuron.neuron_id.neuron_index]
        groups = [(neuron.most_positive_activation_records, positions["top"][k]),
                  (neuron.random_sample, positions["random"][k])]
        for records, starts in zip(neuron.random_sample_by_quantile or [], positions["bins"][k],
                                   strict=False):
            groups.append((records, starts))
        for records, starts in groups:
            real = [int(s) for s in starts if s >= 0]
            if len(real) != len(records):
                raise ValueError(f"neuron {neuron.neuron_id.neuron_index}: {len(records)} "
                                 f"records but {len(real)} positions")
            for record, start in zip(records, real, strict=True):
                record.start = start


def max_activation(records: list[ActivationRecord]) -> float:
    """The largest activation in `records` (0.0 if there are none): the scale an explanation's
    0-10 activations are given in. Computed over the explanation records only, as OpenAI's
    `calculate_max_activation(train_activation_records)`, so held-out records never leak into
    the explainer's input."""
    return max((max(r.activations) for r in records if r.activations), default=0.0)


_TYPES = {cls.__name__: cls for cls in (ActivationRecord, NeuronId, NeuronRecord)}


def to_json(value: Any) -> str:
    """JSON with a `dataclass_name` tag on every record object, as neuron-explainer writes it.

    NaN (an unknown statistic) is written as null, as their orjson-based writer does, so the
    output is strict JSON.
    """
    return json.dumps(_tagged(value), allow_nan=False)


def from_json(text: str) -> Any:
    return json.loads(text, object_hook=_untag)


def _tagged(value: Any) -> Any:
    # The common types first, by exact type: a layer's records are millions of token strings
    # and activations, and an `is_dataclass` check on each made this writer 2.8x slower (about
    # half of a crate run's mining stage).
    kind = type(value)
    if kind is float:
        return None if math.isnan(value) else value
    if kind is str or kind is int or value is None:
        return value
    if kind is list or kind is tuple:  # token texts and activations kept without a call each
        return [item if type(item) is str or (type(item) is float and item == item)
                else _tagged(item) for item in value]
    if dataclasses.is_dataclass(value):
        fields = {f.name: _tagged(getattr(value, f.name)) for f in dataclasses.fields(value)
                  if f.metadata.get("json", True)}
        return {"dataclass_name": type(value).__name__, **fields}
    if isinstance(value, (list, tuple)):
        return [_tagged(item) for item in value]
    if isinstance(value, float) and math.isnan(value):  # a float subclass (numpy's float64)
        return None
    return value


def _untag(obj: dict) -> Any:
    name = obj.get("dataclass_name")
    if name in _TYPES:
        return _TYPES[name](**{k: v for k, v in obj.items() if k != "dataclass_name"})
    return obj
