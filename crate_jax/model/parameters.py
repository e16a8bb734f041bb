"""Parameter counts as the paper reports them (all parameters but position embeddings)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import traverse_util

from crate_jax.model.config import ModelConfig
from crate_jax.model.language_model import POSITION_EMBEDDING, LanguageModel


def count_parameters(params: Any, exclude: tuple[str, ...] = (POSITION_EMBEDDING,)) -> int:
    """Number of scalars in `params`, skipping any subtree whose name is in `exclude`."""
    return sum(int(np.prod(leaf.shape))
               for path, leaf in traverse_util.flatten_dict(params).items()
               if not any(name in exclude for name in path))


def abstract_params(config: ModelConfig) -> Any:
    """Parameter shapes and dtypes without allocating them: even size `b` is counted instantly,
    and a checkpoint's parameters are restored into them without building an optimizer."""
    model = LanguageModel(config)
    tokens = jax.ShapeDtypeStruct((1, 1), np.int32)
    return jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]


def paper_parameter_count(config: ModelConfig) -> int:
    """The paper's convention: every parameter except the learned position embeddings."""
    return count_parameters(abstract_params(config))
