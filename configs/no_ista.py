"""Ablation A: CRATE without its ISTA block (attention-only layers)."""

from configs import crate


def get_config(arg=None):
    config = crate.get_config(arg)
    config.variant = "no_ista"
    config.model.sparse_block = "none"
    return config
