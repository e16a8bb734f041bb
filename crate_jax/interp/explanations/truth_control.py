"""The truth control (`interp.explainer='truth'`): what a score gives an explanation that names
exactly the right concept.

On the planted corpus every token's features are known (`data.planted`). This "explainer"
explains a neuron by the planted feature that best predicts its activations on the explanation
records (or the best two, where the second lowers the squared error by at least
`SECOND_FEATURE_GAIN`), and its simulator predicts, on held-out tokens, each feature's
indicator scaled to the neuron's mean activation on that feature's explanation tokens. It is a
control, not an explainer: no text explainer can say more than its vocabulary, and this one's
vocabulary is the truth. A score that stays low for it cannot see the concept; an explainer
that scores far below it cannot say the concept. It needs each record's place in the
evaluation text (`ActivationRecord.start`) to look the features up, including for the 3-token
snippets that other explainers see out of context: it knows the in-context truth there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crate_jax.interp.activations.records import ActivationRecord
from crate_jax.interp.explanations.explanation import (
    MAX_NORMALIZED_ACTIVATION,
    Explanation,
    SimulationFailure,
)

SECOND_FEATURE_GAIN = 0.05  # the second feature must remove 5% of the first's squared error


class PlantedLabels:
    """The planted features of the evaluation text: `labels` `[tokens, features]` bool, in
    the evaluation text's order (row-major over its sequences), and the features' names."""

    def __init__(self, labels: np.ndarray, names: Sequence[str]):
        self.labels = np.asarray(labels, bool)
        self.names = [str(name) for name in names]
        self.column = {name: k for k, name in enumerate(self.names)}

    def of(self, tokens: Sequence[str], start: int | None) -> np.ndarray:
        """`[len(tokens), features]`: the labels of tokens that start at `start`."""
        if start is None:
            raise SimulationFailure("the truth control needs each record's position in the "
                                    "evaluation text (records/<site>/layer_<l>_positions.npz)")
        rows = self.labels[start:start + len(tokens)]
        if rows.shape[0] != len(tokens):
            raise SimulationFailure(f"tokens {start}..{start + len(tokens)} lie outside the "
                                    f"{self.labels.shape[0]} labelled evaluation tokens")
        return rows


class TruthExplainer:
    """Names the best planted feature(s) of the explanation records (module docstring)."""

    def __init__(self, truth: PlantedLabels):
        self.truth = truth

    def explain(self, records: Sequence[ActivationRecord], max_activation: float) -> Explanation:
        if not records:
            return Explanation("no records", {"features": []})
        labels = np.concatenate([self.truth.of(r.tokens, r.start) for r in records])  # [P, F]
        scale = max_activation if max_activation > 0 else 1.0
        target = np.clip(MAX_NORMALIZED_ACTIVATION
                         * np.concatenate([r.activations for r in records]) / scale,
                         0, MAX_NORMALIZED_ACTIVATION)  # [P]
        chosen: list[tuple[int, float]] = []
        prediction = np.zeros_like(target)
        error = float(np.sum(target ** 2))
        for _ in range(2):
            best = _best_feature(labels, target, prediction, [k for k, _ in chosen])
            if best is None:
                break
            feature, activation, new_prediction = best
            new_error = float(np.sum((target - new_prediction) ** 2))
            if error - new_error <= (SECOND_FEATURE_GAIN * error if chosen else 0.0):
                break
            chosen.append((feature, activation))
            prediction, error = new_prediction, new_error
        features = [{"feature": self.truth.names[k], "activation": round(a, 3)}
                    for k, a in chosen]
        text = ("the planted feature " + "; else ".join(
            f"{f['feature']!r} ({f['activation']:g})" for f in features)
            if features else "no planted feature")
        return Explanation(text=text, details={"features": features})


class TruthSimulator:
    """Predicts the named features' activations, the first feature's where both hold."""

    def __init__(self, truth: PlantedLabels):
        self.truth = truth

    def simulate(self, explanation: Explanation,
                 token_sequences: Sequence[Sequence[str]]) -> list[list[float]]:
        features = explanation.details.get("features", [])
        predictions = []
        for tokens in token_sequences:
            labels = self.truth.of(tokens, getattr(tokens, "start", None))
            values = np.zeros(len(tokens))
            for feature in reversed(features):  # the first listed wins: written last
                values[labels[:, self.truth.column[feature["feature"]]]] = feature["activation"]
            predictions.append(values.tolist())
        return predictions


def _best_feature(labels: np.ndarray, target: np.ndarray, prediction: np.ndarray,
                  taken: list[int]) -> tuple[int, float, np.ndarray] | None:
    """The feature that, predicted at its mean target where no chosen feature holds, lowers
    the squared error most: `(column, activation, new prediction)`; None if none is present."""
    free = ~labels[:, taken].any(axis=1) if taken else np.ones(len(target), bool)
    present = labels & free[:, None]  # [P, F]
    counts = present.sum(axis=0)
    usable = [k for k in np.flatnonzero(counts) if k not in taken]
    if not usable:
        return None
    means = (target @ present) / np.maximum(counts, 1)  # [F]
    # Error change of predicting means[k] on present[:, k] (where prediction is 0 now).
    gains = counts * means ** 2  # sum over present of (t^2 - (t - m)^2) = n m^2 at the mean
    feature = max(usable, key=lambda k: (gains[k], -k))
    new_prediction = np.where(present[:, feature], means[feature], prediction)
    return int(feature), float(means[feature]), new_prediction
