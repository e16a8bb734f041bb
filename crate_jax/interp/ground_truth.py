"""Ground-truth interpretability on the planted corpus: which neurons encode the known features.

Explanation scores say how well a text explanation predicts a neuron; on the planted corpus we
also know what each token *is* (its features, see `data.planted`), so we can ask directly:

- per feature, the best neuron's AUROC (how well that one neuron's activation separates tokens
  with the feature from tokens without it) and which neuron it is;
- recovery: the fraction of features with a neuron at AUROC >= 0.9;
- per neuron, its best feature's AUROC and its monosemanticity: the share of its positive
  activation mass that falls on tokens with that feature (NaN for a neuron that never fires);
- whether the explanation metric measures what it claims: across scored neurons, the Spearman
  rank correlation between the top-and-random explanation score and monosemanticity;
- where the model's loss sits above the entropy floor, by feature (what it has not learned).

AUROC is directional (high activation = feature present), as explanations describe what makes a
neuron fire. It is computed exactly from ranks (Mann-Whitney U, ties averaged) on every token of
the interpretability text, so it needs all activations in memory: `[tokens, width]` per site
and layer, fine for the small models the planted corpus is for.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from crate_jax.model import LanguageModel, apply_with_neurons

RECOVERY_AUROC = 0.9


def feature_aurocs(activations: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`[neurons, features]` AUROC of each neuron's activation for each feature.

    `activations`: `[tokens, neurons]`; `labels`: `[tokens, features]` bool. A feature present on
    no token or on every token has no AUROC (NaN). A constant neuron scores 0.5.
    """
    ranks = stats.rankdata(activations, axis=0)  # average ranks for ties
    positives = labels.sum(axis=0).astype(np.float64)
    negatives = labels.shape[0] - positives
    rank_sums = ranks.T @ labels.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        aurocs = (rank_sums - positives * (positives + 1) / 2) / (positives * negatives)
    aurocs[:, (positives == 0) | (negatives == 0)] = np.nan
    return aurocs


def activation_mass_shares(activations: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`[neurons, features]`: the share of each neuron's positive activation mass on each feature
    (NaN for a neuron whose activation is never positive)."""
    positive = np.maximum(activations.astype(np.float64), 0.0)
    total = positive.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = (positive.T @ labels.astype(np.float64)) / total[:, None]
    shares[total <= 0] = np.nan
    return shares


def layer_ground_truth(activations: np.ndarray, labels: np.ndarray,
                       feature_names: list[str]) -> dict:
    """The ground-truth summary of one site and layer (see the module docstring).

    `activations`: `[tokens, neurons]` for every neuron of the layer; neuron indices are columns.
    """
    aurocs = feature_aurocs(activations, labels)
    shares = activation_mass_shares(activations, labels)
    present = ~np.all(np.isnan(aurocs), axis=0)
    features = {}
    for index, name in enumerate(feature_names):
        if present[index]:
            best = int(np.nanargmax(aurocs[:, index]))
            features[name] = {"best_neuron": best, "auroc": float(aurocs[best, index])}
    best_feature = np.argmax(np.where(np.isnan(aurocs), -np.inf, aurocs), axis=1)
    rows = np.arange(aurocs.shape[0])
    best_auroc = aurocs[rows, best_feature]
    mass_on_best = shares[rows, best_feature]
    recovered = [entry["auroc"] >= RECOVERY_AUROC for entry in features.values()]
    return {
        "recovery": float(np.mean(recovered)) if recovered else math.nan,
        "mean_monosemanticity": _nanmean(mass_on_best),
        "mean_best_auroc": _nanmean(best_auroc),
        "firing_neurons": int(np.sum(~np.isnan(mass_on_best))),
        "features": features,
        "neurons": {"index": rows.tolist(),
                    "best_feature": [feature_names[i] for i in best_feature],
                    "best_auroc": _json_floats(best_auroc),
                    "mass_on_best": _json_floats(mass_on_best)},
    }


def score_vs_truth(layer_truth: dict, scores: dict[int, float]) -> dict:
    """Spearman correlation, across scored neurons, of explanation score and ground truth.

    `scores`: `{neuron index: top-and-random score}` (NaN or None for unscorable neurons, which
    are left out, as are neurons that never fire).
    """
    mass = layer_truth["neurons"]["mass_on_best"]
    best_auroc = layer_truth["neurons"]["best_auroc"]
    pairs = [(score, mass[neuron], best_auroc[neuron]) for neuron, score in scores.items()
             if score is not None and math.isfinite(score) and mass[neuron] is not None]
    result = {"n": len(pairs), "spearman": math.nan, "spearman_best_auroc": math.nan}
    if len(pairs) >= 3:
        values = np.asarray(pairs, np.float64)
        for key, column in (("spearman", 1), ("spearman_best_auroc", 2)):
            if np.ptp(values[:, 0]) > 0 and np.ptp(values[:, column]) > 0:
                result[key] = float(stats.spearmanr(values[:, 0], values[:, column])[0])
    return result


def capture_all_neurons(model: LanguageModel, params, sequences: np.ndarray,
                        sites: tuple[str, ...], batch_size: int
                        ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every neuron's activation and the model's loss on `sequences` (`[count, seq_len]`).

    Returns `({site: [layers, tokens, width]} float32, nll [count, seq_len - 1])`: tokens in
    reading order (row-major over sequences); `nll[i, j]` is the model's negative
    log-likelihood of `sequences[i, j + 1]` given the sequence before it, in nats.
    """

    def forward(p, t):
        logits, neurons = apply_with_neurons(model, p, t, sites)
        log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(log_probs, t[:, 1:, None], axis=-1)[..., 0]
        return neurons, nll

    forward = jax.jit(forward)
    chunks: dict[str, list[np.ndarray]] = {site: [] for site in sites}
    losses = []
    for start in range(0, sequences.shape[0], batch_size):
        neurons, nll = jax.device_get(forward(params, sequences[start:start + batch_size]))
        losses.append(np.asarray(nll, np.float64))
        for site in sites:
            layers, batch, seq_len, width = neurons[site].shape
            chunks[site].append(np.asarray(neurons[site], np.float32)
                                .reshape(layers, batch * seq_len, width))
    return ({site: np.concatenate(parts, axis=1) for site, parts in chunks.items()},
            np.concatenate(losses))


def loss_above_floor(nll: np.ndarray, floor_nll: np.ndarray, labels: np.ndarray,
                     feature_names: list[str]) -> dict:
    """Where a model's loss exceeds the planted entropy floor, by feature.

    `nll`: `[count, seq_len - 1]` from `capture_all_neurons`; `floor_nll` and `labels` describe
    the `count * seq_len` tokens of the sequences in order. For each feature: the fraction of
    predicted tokens carrying it, the mean excess (model - floor, nats) on those tokens and its
    share of the overall excess per token (shares of overlapping features overlap). The floor
    conditions on the whole document, while the model sees only its sequence, so a sequence
    that starts mid-document keeps part of the excess out of any model's reach.
    """
    count, predicted = nll.shape
    positions = (np.arange(count)[:, None] * (predicted + 1)
                 + np.arange(1, predicted + 1)[None, :]).reshape(-1)
    excess = nll.reshape(-1) - floor_nll[positions]
    rows = labels[positions]
    by_feature = {}
    for index, name in enumerate(feature_names):
        mask = rows[:, index]
        if mask.any():
            by_feature[name] = {"tokens_fraction": float(mask.mean()),
                                "excess_per_token": float(excess[mask].mean()),
                                "excess_share": float(excess[mask].sum() / excess.size)}
    return {"model_loss": float(nll.mean()), "floor": float(floor_nll[positions].mean()),
            "excess": float(excess.mean()), "tokens": int(excess.size), "by_feature": by_feature}


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _json_floats(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]
