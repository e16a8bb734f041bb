"""Models made elsewhere as crate_jax runs, and crate_jax models for other code: the paper's
crate-lm checkpoints and Hugging Face's GPT-2 (`python -m crate_jax.convert`, see `__main__`).

Needs the optional `convert` extra (PyTorch, safetensors); nothing else in crate_jax does.
"""
