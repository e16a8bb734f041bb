"""CRATE's MSSA with GPT-2's ReLU MLP in place of ISTA: isolates the sparse-coding block."""

from configs import crate


def get_config(arg=None):
    config = crate.get_config(arg)
    config.variant = "ista_to_mlp"
    config.model.sparse_block = "mlp"
    return config
