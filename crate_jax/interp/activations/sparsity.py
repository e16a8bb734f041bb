"""How sparse a site's activations are on the evaluation set, counted while streaming.

CRATE's ISTA block is meant to produce sparse codes, so the report needs exact-zero statistics
(what the soft threshold produces) and, for sites without a hard threshold, a near-zero variant
(`|a| <= eps`). Only per-neuron counters are kept, so memory is `O(num_neurons)` however many
tokens are observed.
"""

from __future__ import annotations

import numpy as np


class SparsityCounter:
    """Counts zero / near-zero activations of one site with `num_neurons` neurons.

    Feed every token once with `observe`; `summary` then gives the fractions over all
    tokens x neurons, the mean number of active neurons per token (L0) and the dead neurons.
    """

    def __init__(self, num_neurons: int, eps: float = 1e-3):
        if num_neurons <= 0:
            raise ValueError(f"num_neurons must be positive, got {num_neurons}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.num_neurons = int(num_neurons)
        self.eps = float(eps)
        self.tokens = 0
        self.nonzero_counts = np.zeros(self.num_neurons, np.int64)  # [N] tokens with a != 0
        self.above_eps_counts = np.zeros(self.num_neurons, np.int64)  # [N] tokens with |a| > eps

    def observe(self, activations: np.ndarray) -> None:
        """Adds `activations` `[..., N]` (any leading shape, e.g. `[batch, seq, N]`)."""
        values = np.asarray(activations, dtype=np.float32)
        if values.ndim == 0 or values.shape[-1] != self.num_neurons:
            raise ValueError(f"activations must have shape [..., {self.num_neurons}], "
                             f"got {values.shape}")
        values = values.reshape(-1, self.num_neurons)
        self.tokens += values.shape[0]
        self.nonzero_counts += np.count_nonzero(values, axis=0)
        self.above_eps_counts += np.count_nonzero(np.abs(values) > self.eps, axis=0)

    def summary(self) -> dict:
        """Plain Python numbers (JSON-ready); fractions are NaN before any token is observed.

        `zero_fraction`: exact zeros over all tokens x neurons; `mean_l0`: mean number of
        exactly-nonzero neurons per token; `dead_neurons`: neurons never nonzero. The `_eps`
        variants count `|a| <= eps` as zero instead.
        """
        nonzero = int(self.nonzero_counts.sum())
        above_eps = int(self.above_eps_counts.sum())
        cells = self.tokens * self.num_neurons
        tokens = self.tokens if self.tokens else np.nan
        return {
            "tokens": self.tokens,
            "zero_fraction": float((cells - nonzero) / cells) if cells else float("nan"),
            "mean_l0": float(nonzero / tokens),
            "dead_neurons": int(np.count_nonzero(self.nonzero_counts == 0)),
            "near_zero_fraction": float((cells - above_eps) / cells) if cells else float("nan"),
            "mean_l0_eps": float(above_eps / tokens),
            "dead_neurons_eps": int(np.count_nonzero(self.above_eps_counts == 0)),
            "eps": self.eps,
            "num_neurons": self.num_neurons,
        }
