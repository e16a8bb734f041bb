"""Streaming mean and central moments per neuron, mergeable batch by batch."""

from __future__ import annotations

import numpy as np


class RunningMoments:
    """Count, mean and central moment sums `M2..M4` per neuron, in float64.

    Batches are combined with the pairwise update of Chan et al. / Pébay (2008), which stays
    accurate when the mean is large compared with the spread (raw power sums would not).
    """

    def __init__(self, num_neurons: int):
        self.count = 0
        self.mean, self.m2, self.m3, self.m4 = (np.zeros(num_neurons) for _ in range(4))
        self._scratch: np.ndarray | None = None  # [2, rows, N] float64, reused across blocks

    def add(self, values: np.ndarray) -> None:
        """`values` `[rows, N]` float32. Blocks of 2**18 elements (2 MiB of float64, cache-sized)
        in two reused scratch buffers: measured ~2x faster than whole-batch temporaries."""
        block_rows = max(1, (1 << 18) // values.shape[1])
        for start in range(0, values.shape[0], block_rows):
            self._add_block(values[start:start + block_rows])

    def _add_block(self, values: np.ndarray) -> None:
        n_b = values.shape[0]
        if self._scratch is None or self._scratch.shape[1] < n_b:
            self._scratch = np.empty((2, n_b, values.shape[1]))
        deviation, power = self._scratch[0, :n_b], self._scratch[1, :n_b]
        mean_b = values.sum(axis=0, dtype=np.float64) / n_b
        np.subtract(values, mean_b, out=deviation)
        np.multiply(deviation, deviation, out=power)
        m2_b = power.sum(axis=0)
        power *= deviation
        m3_b = power.sum(axis=0)
        power *= deviation
        m4_b = power.sum(axis=0)
        n_a = float(self.count)
        n = n_a + n_b
        delta = mean_b - self.mean
        m2_a, m3_a = self.m2, self.m3
        self.m4 = (self.m4 + m4_b
                   + delta**4 * n_a * n_b * (n_a * n_a - n_a * n_b + n_b * n_b) / n**3
                   + 6 * delta**2 * (n_a * n_a * m2_b + n_b * n_b * m2_a) / n**2
                   + 4 * delta * (n_a * m3_b - n_b * m3_a) / n)
        self.m3 = (m3_a + m3_b + delta**3 * n_a * n_b * (n_a - n_b) / n**2
                   + 3 * delta * (n_a * m2_b - n_b * m2_a) / n)
        self.m2 = m2_a + m2_b + delta**2 * n_a * n_b / n
        self.mean = self.mean + delta * n_b / n
        self.count += n_b

    def summary(self) -> dict[str, np.ndarray]:
        """Population mean, variance, skewness and excess kurtosis `[N]`; NaN where undefined."""
        if not self.count:
            return {name: np.full(self.mean.shape, np.nan)
                    for name in ("mean", "variance", "skewness", "kurtosis")}
        variance = self.m2 / self.count
        with np.errstate(divide="ignore", invalid="ignore"):
            skewness = np.where(variance > 0, self.m3 / self.count / variance**1.5, np.nan)
            kurtosis = np.where(variance > 0, self.m4 / self.count / variance**2 - 3.0, np.nan)
        return {"mean": self.mean.copy(), "variance": variance, "skewness": skewness,
                "kurtosis": kurtosis}
