"""The paper's GPT-2 baseline: standard attention, ReLU MLP, no biases."""

from configs import crate


def get_config(arg=None):
    config = crate.get_config(arg)
    config.variant = "gpt2"
    config.model.attention = "mhsa"
    config.model.sparse_block = "mlp"
    config.model.use_bias = False
    return config
