"""The CRATE model family: MSSA or standard attention, with ISTA, MLP or no sparse block."""

from crate_jax.model.attention import MultiHeadSelfAttention, SubspaceSelfAttention
from crate_jax.model.config import ConfigError, ModelConfig, model_identity
from crate_jax.model.ista import SparseCodingBlock, ista_code
from crate_jax.model.language_model import LanguageModel, Layer, model_from_config
from crate_jax.model.mlp import FeedForwardBlock
from crate_jax.model.neurons import (
    NEURON_SITES,
    NeuronSteer,
    apply_with_neurons,
    neuron_sites,
    neuron_width,
    steering_variables,
)
from crate_jax.model.parameters import abstract_params, count_parameters, paper_parameter_count

__all__ = [
    "NEURON_SITES", "ConfigError", "FeedForwardBlock", "LanguageModel", "Layer", "ModelConfig",
    "MultiHeadSelfAttention", "NeuronSteer", "SparseCodingBlock", "SubspaceSelfAttention",
    "abstract_params",
    "apply_with_neurons", "count_parameters", "ista_code", "model_from_config", "model_identity",
    "neuron_sites", "neuron_width", "paper_parameter_count", "steering_variables",
]
