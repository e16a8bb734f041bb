"""Weight initialisers shared by the model's blocks (GPT-2's scheme, as in the paper's code)."""

from __future__ import annotations

import math

import flax.linen as nn

# GPT-2 / nanoGPT: every Dense kernel and the embeddings ~ N(0, 0.02^2).
DEFAULT_STDDEV = 0.02
DEFAULT_INIT = nn.initializers.normal(DEFAULT_STDDEV)


def residual_output_init(num_layers: int) -> nn.initializers.Initializer:
    """GPT-2 scales projections that write into the residual stream by 1/sqrt(2 * layers), so the
    stream's variance at init does not grow with depth."""
    return nn.initializers.normal(DEFAULT_STDDEV / math.sqrt(2 * num_layers))


# The paper's code calls PyTorch's `kaiming_uniform_` (a=0, gain sqrt(2)) on a `[4d, d]` tensor,
# whose fan_in is its size(1) = d: U(-b, b) with b = sqrt(2) * sqrt(3 / d) = sqrt(6 / d). Our
# dictionary is stored transposed, `[d, 4d]`, so its fan_in is the first axis (`in_axis=-2`).
DICTIONARY_INIT = nn.initializers.kaiming_uniform(in_axis=-2, out_axis=-1)
