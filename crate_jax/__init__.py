"""crate_jax: white-box (CRATE) language models and neuron-level interpretability in JAX/Flax."""

__version__ = "0.1.0"
