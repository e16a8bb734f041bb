"""Neuron-level interpretability: records, sparsity, explanations, simulations and scores."""
