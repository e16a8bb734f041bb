"""Experiment configs, one file per variant; ablations import `configs.crate`, change its keys."""
