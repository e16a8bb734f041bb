"""Training: optimizer, sharded train step, checkpoints, metrics and the training loop."""
