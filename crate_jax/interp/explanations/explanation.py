"""What every explainer and simulator backend provides (`token_lookup`, `random`, `llm`).

An explainer turns a neuron's explanation records into a short text; a simulator, given only that
text, predicts the neuron's activation on each token of unseen records (0-10 scale, as in Bills
et al. 2023). The scorer then correlates predictions with the true activations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from crate_jax.interp.activations.records import ActivationRecord

MAX_NORMALIZED_ACTIVATION = 10


@dataclasses.dataclass(frozen=True)
class Explanation:
    """`text` is what a person (or a simulator) reads; `details` keeps backend-specific data
    needed to simulate from it (e.g. token weights), and is saved with it."""

    text: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


class BackendError(RuntimeError):
    """A backend could not answer at all (server down, timeouts after retries). The run stops
    with this message; finished neurons stay on disk and a rerun resumes."""


class SimulationFailure(RuntimeError):
    """A backend answered, but its output could not be parsed into predictions. Recorded as a
    failure for that neuron and split, never scored as zeros."""


class Explainer(Protocol):
    def explain(self, records: Sequence[ActivationRecord], max_activation: float) -> Explanation:
        """An explanation of the neuron whose `records` these are; `max_activation` (the largest
        activation in `records` themselves, never in held-out ones) is the scale on which
        activations are normalised to 0-10."""
        ...


class Simulator(Protocol):
    def simulate(self, explanation: Explanation,
                 token_sequences: Sequence[Sequence[str]]) -> list[list[float]]:
        """Predicted activations (0-10) for every token of every sequence, same shapes.

        Raises `SimulationFailure` for unparsable output, `BackendError` when unreachable.
        """
        ...


class Judge(Protocol):
    """Delphi-style yes/no scoring of an explanation (detection and fuzzing, `judging.py`).

    Each method returns one value per context; `value >= threshold` is the judge's "yes". A
    yes/no judge returns 0.0 or 1.0 (threshold 1.0); a graded judge (`graded`: a simulator's
    predictions on the 0-10 scale) returns more values, so AUROC can be computed from them,
    and has threshold None: "yes" from the neuron's firing level on that scale
    (`judging.firing_level`). Raises `SimulationFailure` for unparsable output,
    `BackendError` when unreachable.
    """

    threshold: float | None
    graded: bool

    def detect(self, explanation: Explanation,
               contexts: Sequence[Sequence[str]]) -> list[float]:
        """Does the neuron fire on the last token of each context?"""
        ...

    def fuzz(self, explanation: Explanation, contexts: Sequence[Sequence[str]],
             highlighted: Sequence[Sequence[bool]]) -> list[float]:
        """Are the highlighted tokens of each context (`highlighted[i][j]` marks token j of
        context i) the ones the explanation says the neuron fires on?"""
        ...


def normalized_activations(activations: Sequence[float], max_activation: float) -> list[int]:
    """Activations mapped to integers 0-10 relative to `max_activation`; negatives become 0.

    This is the discretisation the explainer prompt shows (as in OpenAI's neuron-explainer).
    """
    if max_activation <= 0:
        return [0 for _ in activations]
    return [min(MAX_NORMALIZED_ACTIVATION,
                max(0, int(MAX_NORMALIZED_ACTIVATION * a / max_activation)))
            for a in activations]
