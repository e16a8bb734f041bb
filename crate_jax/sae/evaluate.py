"""How good a site's SAEs are, on held-out text: sparsity, reconstruction, and what the model
keeps of its next-token loss with each SAE spliced in.

Per layer, over the evaluation windows (validation text, never trained on):
- `l0`: mean latents active per token; `dead_fraction`: latents that never fire;
- `fvu`: fraction of variance unexplained, sum ||x - x_hat||^2 / sum ||x - mean x||^2;
- `loss_clean`, `loss_spliced` (the site's activations at that layer replaced by the SAE's
  reconstruction, everything else unchanged), `loss_zero_ablated` and `loss_mean_ablated` (by
  zero, by their mean over the evaluation tokens), all in nats per token; and
  `loss_recovered` = (mean-ablated - spliced) / (mean-ablated - clean): 1 keeps all the loss
  the site's activations carry, 0 none of it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from crate_jax.losses import cross_entropy
from crate_jax.model import LanguageModel, apply_with_neurons
from crate_jax.model.steering import splicing
from crate_jax.sae.model import SaeSettings, decode, encode, reconstruct
from crate_jax.sae.train import SaeState


def _layer_params(state: SaeState, layer: int) -> tuple[dict, jax.Array, jax.Array]:
    params = jax.tree_util.tree_map(lambda leaf: leaf[layer], state.params)
    return params, state.scale[layer], state.threshold[layer]


def _summed_loss(model: LanguageModel, params, windows, splices: dict[tuple[str, int], Callable]):
    with splicing(splices):
        logits = model.apply({"params": params}, windows[:, :-1])
    return cross_entropy(logits, windows[:, 1:]).sum()


def evaluate_site(model: LanguageModel, params, state: SaeState, settings: SaeSettings,
                  site: str, windows: np.ndarray, batch_size: int) -> dict[str, dict]:
    """`{layer: {metric: value}}` of the site's SAEs on `windows` (`[n, seq + 1]`)."""
    layers = model.config.num_layers
    capture = jax.jit(lambda p, t: apply_with_neurons(model, p, t, (site,))[1][site])

    @jax.jit
    def statistics(sae_state, activations):
        """Per layer: squared error, sum of x, sum of ||x||^2, active latents, fired latents."""
        def one(layer_params, scale, threshold, x):
            x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
            latents = encode(layer_params, x * scale, settings, threshold)
            x_hat = decode(layer_params, latents) / scale  # `reconstruct`, encoding once
            return (jnp.sum((x - x_hat) ** 2), x.sum(0), jnp.sum(x ** 2),
                    jnp.sum(latents > 0), jnp.any(latents > 0, axis=0))
        return jax.vmap(one)(sae_state.params, sae_state.scale, sae_state.threshold,
                             activations)

    batches = [windows[start:start + batch_size] for start in range(0, len(windows), batch_size)]
    error = np.zeros(layers)
    sums = np.zeros((layers, state.params["b_pre"].shape[-1]))
    squares, active = np.zeros(layers), np.zeros(layers)
    fired = np.zeros((layers, settings.width), bool)
    tokens = 0
    for batch in batches:
        activations = capture(params, jnp.asarray(batch[:, :-1]))
        out = jax.device_get(statistics(state, activations))
        error += out[0]
        sums += out[1]
        squares += out[2]
        active += out[3]
        fired |= out[4]
        tokens += batch.shape[0] * (batch.shape[1] - 1)
    means = sums / tokens
    variance = squares - tokens * np.sum(means ** 2, axis=-1)

    @jax.jit
    def layer_losses(model_params, batch, sae_state, means):
        """Summed losses `[layers, 3]`: each layer's SAE spliced in, the site zero- and
        mean-ablated there; one compiled program for every layer and splice."""
        rows = []
        for layer in range(layers):
            layer_params, scale, threshold = _layer_params(sae_state, layer)
            mean = means[layer]
            splices = (lambda x, p=layer_params, s=scale, t=threshold: reconstruct(
                           p, s, t, x, settings),
                       jnp.zeros_like,
                       lambda x, m=mean: jnp.broadcast_to(m.astype(x.dtype), x.shape))
            rows.append(jnp.stack([_summed_loss(model, model_params, batch, {(site, layer): f})
                                   for f in splices]))
        return jnp.stack(rows), _summed_loss(model, model_params, batch, {})

    spliced_sums, clean_sum = np.zeros((layers, 3)), 0.0
    for batch in batches:
        per_layer, clean = jax.device_get(layer_losses(params, jnp.asarray(batch), state,
                                                       jnp.asarray(means, jnp.float32)))
        spliced_sums += per_layer
        clean_sum += float(clean)
    results = {}
    for layer in range(layers):
        losses = np.concatenate([[clean_sum], spliced_sums[layer]]) / tokens
        gap = losses[3] - losses[0]
        results[str(layer)] = {
            "l0": float(active[layer] / tokens), "fvu": float(error[layer] / variance[layer]),
            "dead_fraction": float(1.0 - fired[layer].mean()),
            "loss_clean": losses[0], "loss_spliced": losses[1], "loss_zero_ablated": losses[2],
            "loss_mean_ablated": losses[3],
            "loss_recovered": float((losses[3] - losses[1]) / gap) if gap > 0 else None,
            "tokens": tokens}
    return {layer: {key: (float(value) if isinstance(value, np.floating) else value)
                    for key, value in metrics.items()} for layer, metrics in results.items()}
