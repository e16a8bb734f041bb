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


# PyTorch's `kaiming_uniform_` on a `[d, 4d]` tensor (the CRATE dictionary's layout) bounds it by
# sqrt(6 / fan_in) with fan_in = 4d, the size of its last axis; `in_axis=-1` reproduces that.
DICTIONARY_INIT = nn.initializers.kaiming_uniform(in_axis=-1, out_axis=-2)
