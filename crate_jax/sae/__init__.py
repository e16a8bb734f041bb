"""Sparse autoencoders on a trained model's activations: the `sae` stage (`stage.py`)."""
