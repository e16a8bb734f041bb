"""Ablation B: CRATE with MSSA replaced by standard multi-head self-attention (separate q, k, v)."""

from configs import crate


def get_config(arg=None):
    config = crate.get_config(arg)
    config.variant = "standard_attention"
    config.model.attention = "mhsa"
    return config
