"""Ground-truth interpretability on the planted corpus: which neurons encode the known features.

Explanation scores say how well a text explanation predicts a neuron; on the planted corpus we
also know what each token *is* (its features, see `data.planted`), so we can ask directly:

- per feature, the best neuron's AUROC (how well that one neuron's activation separates tokens
  with the feature from tokens without it) and which neuron it is, and the most selective
  neuron's selectivity (below);
- recovery: the fraction of features with a neuron at AUROC >= 0.9 (in this layer; the report
  pools layers: a feature counts if a neuron of any layer detects it);
- per neuron, its selectivity for its most selective feature (below); neurons with fewer than
  `MIN_JUDGED_TOKENS` tokens above their mean activation are too few firing to judge, counted
  apart and left out of the mean;
- whether the explanation metric measures what it claims: across scored neurons, the Spearman
  rank correlation between the top-and-random explanation score and selectivity;
- where the model's loss sits above the entropy floor, by feature (what it has not learned).

Selectivity of neuron n for feature f is `min(2 AUROC - 1, (share - p) / (1 - p))`: `p` is the
share of tokens carrying f (its base rate) and `share` the share of the neuron's activation
above its mean that falls on those tokens. The first term is recall-like: for a neuron that
fires with one value it is Youden's J, true positive rate minus false positive rate, and a
neuron that fires on half of f scores 0.5. The second is precision-like: a neuron that also
fires on another feature, however rare both are, puts only part of its mass on f. Each alone
misses what the other catches (AUROC barely sees false positives on a rare second feature;
mass share cannot see the tokens of f a neuron misses), so both must be high. Both are 0 for a
neuron unrelated to f (a constant neuron, whose activation never exceeds its mean, has share
0 by definition and is in any case too few firing) and 1 for a neuron that fires on exactly
the tokens of f, whatever f's frequency and whatever the firing magnitudes; a base-rate-free
share (monosemanticity) gives a constant neuron the base rate of the most common feature.
Mass is measured above the neuron's mean, not above 0, so an offset (a residual-stream
coordinate that is never 0) changes nothing, as it changes nothing in the explanation scores,
which are correlations. The best feature of a neuron is chosen by selectivity, the quantity
reported. Features on fewer than `MIN_JUDGED_TOKENS` tokens (or on all but that many) of the
interpretability text are not judged either: there, chance alone reaches high values.

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

from crate_jax.data.references import document_in_window
from crate_jax.model import LanguageModel
from crate_jax.sae.latents import SiteReader, as_reader

RECOVERY_AUROC = 0.9
# Tokens a neuron must fire on (above its mean) and a feature must cover, to be judged: a
# neuron firing on a handful of tokens, or a feature on a handful, reaches 0 or 1 by chance.
MIN_JUDGED_TOKENS = 20


def feature_aurocs(activations: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`[neurons, features]` AUROC of each neuron's activation for each feature.

    `activations`: `[tokens, neurons]`; `labels`: `[tokens, features]` bool. A feature present on
    no token or on every token has no AUROC (NaN). A constant neuron scores 0.5.
    """
    from scipy import stats  # on first use: it takes most of a second to import

    ranks = stats.rankdata(activations, axis=0)  # average ranks for ties
    positives = labels.sum(axis=0).astype(np.float64)
    negatives = labels.shape[0] - positives
    rank_sums = ranks.T @ labels.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        aurocs = (rank_sums - positives * (positives + 1) / 2) / (positives * negatives)
    aurocs[:, (positives == 0) | (negatives == 0)] = np.nan
    return aurocs


def _above_mean(activations: np.ndarray) -> np.ndarray:
    """`[tokens, neurons]`: each activation's excess over its neuron's mean, 0 where below (and
    everywhere for a constant neuron, whose rounded mean may differ from its value)."""
    values = activations.astype(np.float64)
    excess = np.maximum(values - values.mean(axis=0), 0.0)
    excess[:, np.ptp(values, axis=0) == 0] = 0.0
    return excess


def firing_counts(activations: np.ndarray) -> np.ndarray:
    """`[neurons]`: how many tokens each neuron fires on, above its mean activation."""
    return (_above_mean(activations) > 0).sum(axis=0)


def activation_mass_shares(activations: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`[neurons, features]`: the share of each neuron's activation mass above its mean that
    falls on each feature's tokens (NaN for a neuron that never exceeds its mean: a constant)."""
    excess = _above_mean(activations)
    total = excess.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = (excess.T @ labels.astype(np.float64)) / total[:, None]
    shares[total <= 0] = np.nan
    return shares


def feature_selectivity(activations: np.ndarray, labels: np.ndarray,
                        aurocs: np.ndarray | None = None,
                        shares: np.ndarray | None = None) -> np.ndarray:
    """`[neurons, features]`: `min(2 AUROC - 1, (share - p) / (1 - p))` (module docstring); 0
    for a constant neuron, NaN for a feature on no token or on every token. `aurocs` and
    `shares` (`feature_aurocs`, `activation_mass_shares`) are computed when not given."""
    if aurocs is None:
        aurocs = feature_aurocs(activations, labels)
    if shares is None:
        shares = activation_mass_shares(activations, labels)
    base_rate = labels.mean(axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = (shares - base_rate) / (1.0 - base_rate)
    precision[np.isnan(shares).all(axis=1)] = 0.0  # no mass above the mean: on no feature
    selectivity = np.minimum(2.0 * aurocs - 1.0, precision)
    selectivity[:, np.isnan(aurocs).all(axis=0)] = np.nan
    return selectivity


def layer_ground_truth(activations: np.ndarray, labels: np.ndarray,
                       feature_names: list[str]) -> dict:
    """The ground-truth summary of one site and layer (see the module docstring).

    `activations`: `[tokens, neurons]` for every neuron of the layer; neuron indices are columns.
    Features on too few tokens to judge are listed under `too_rare_features` and left out of
    `features`, recovery and each neuron's best feature.
    """
    aurocs, shares, firing = _per_neuron_measures(activations, labels)
    selectivity = feature_selectivity(activations, labels, aurocs, shares)
    positives = labels.sum(axis=0)
    judged_feature = ((positives >= MIN_JUDGED_TOKENS)
                      & (labels.shape[0] - positives >= MIN_JUDGED_TOKENS))
    features, too_rare = {}, []
    for index, name in enumerate(feature_names):
        if not judged_feature[index]:
            too_rare.append(name)
            continue
        best = int(np.nanargmax(aurocs[:, index]))
        selective = int(np.nanargmax(selectivity[:, index]))
        features[name] = {"best_neuron": best, "auroc": float(aurocs[best, index]),
                          "most_selective_neuron": selective,
                          "selectivity": float(selectivity[selective, index]),
                          "tokens": int(positives[index])}
    candidates = np.where(judged_feature[None, :] & np.isfinite(selectivity), selectivity,
                          -np.inf)
    rows = np.arange(aurocs.shape[0])
    best_feature = np.argmax(candidates, axis=1)
    judged = (firing >= MIN_JUDGED_TOKENS) & judged_feature.any()
    best_selectivity = np.where(judged, selectivity[rows, best_feature], np.nan)
    recovered = [entry["auroc"] >= RECOVERY_AUROC for entry in features.values()]
    return {
        "recovery": float(np.mean(recovered)) if recovered else math.nan,
        "mean_selectivity": _nanmean(best_selectivity),
        "judged_neurons": int(judged.sum()),
        "too_few_firing": int((~judged).sum()),
        "features": features,
        "too_rare_features": too_rare,
        "neurons": {"index": rows.tolist(),
                    "best_feature": [feature_names[i] if judged[n] else None
                                     for n, i in enumerate(best_feature)],
                    "selectivity": _json_floats(best_selectivity),
                    "best_auroc": _json_floats(np.where(judged, aurocs[rows, best_feature],
                                                        np.nan)),
                    "mass_on_best": _json_floats(np.where(judged, shares[rows, best_feature],
                                                          np.nan)),
                    "firing_tokens": firing.tolist()},
    }


# Neurons measured at a time: the ranks and float64 copies of a block of columns are a few MB,
# where a whole 2,048-wide SAE layer's set the study's peak memory (a gpt2 run's interp stage
# peaked 1.0 GB lower with blocks of 256, benchmarks/README.md); 64 rather than 256 took the
# ground truth of a gpt2 run (planted tiny, 16,384 tokens) from 0.42 to 0.28 GB above where it
# started, in the same time (8.3 s), and the study's interp stage peaks there.
_NEURON_BLOCK = 64


def _per_neuron_measures(activations: np.ndarray, labels: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(`feature_aurocs`, `activation_mass_shares`, `firing_counts`) of every neuron, computed a
    block of neurons at a time: each neuron's measures depend on its own column only."""
    measured = []
    for start in range(0, activations.shape[1], _NEURON_BLOCK):
        block = np.ascontiguousarray(activations[:, start:start + _NEURON_BLOCK])
        measured.append((feature_aurocs(block, labels), activation_mass_shares(block, labels),
                         firing_counts(block)))
    return tuple(np.concatenate(parts) for parts in zip(*measured, strict=True))


def score_vs_truth(layer_truth: dict, scores: dict[int, float]) -> dict:
    """Spearman correlation, across scored neurons, of explanation score and selectivity.

    `scores`: `{neuron index: top-and-random score}` (NaN or None for unscorable neurons, which
    are left out, as are neurons too few firing to judge, whose selectivity is None).
    """
    selectivity = layer_truth["neurons"]["selectivity"]
    return _spearman([(score, selectivity[neuron]) for neuron, score in scores.items()
                      if score is not None and math.isfinite(score)
                      and selectivity[neuron] is not None])


# What a score is checked against: each neuron's selectivity for its most selective feature
# (the truth measure above) and that feature's AUROC (recall-like only).
VALIDITY_MEASURES = ("selectivity", "best_auroc")  # fields of `layer_ground_truth`'s neurons


def score_validity(site_truth: dict[str, dict],
                   scores: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """How each score of one explainer tracks the truth over one site's neurons, all layers
    pooled: `{score: {measure: {"spearman", "n"}}}` (`VALIDITY_MEASURES`).

    `site_truth`: `{layer: layer_ground_truth(...)}`; `scores`: `{layer: {neuron: {score:
    value}}}`. Neurons too few firing to judge, and scores that are None or NaN, are left out.
    """
    names = sorted({name for by_neuron in scores.values() for neuron_scores in by_neuron.values()
                    for name in neuron_scores})
    result = {}
    for name in names:
        result[name] = {}
        for measure in VALIDITY_MEASURES:
            pairs = [(value, site_truth[layer]["neurons"][measure][neuron])
                     for layer, by_neuron in scores.items()
                     for neuron, neuron_scores in by_neuron.items()
                     if (value := neuron_scores.get(name)) is not None and math.isfinite(value)
                     and site_truth[layer]["neurons"][measure][neuron] is not None]
            result[name][measure] = _spearman(pairs)
    return result


def _spearman(pairs: list[tuple[float, float]]) -> dict:
    """`{"spearman", "n"}` of (x, y) pairs; NaN with fewer than 3 or a constant side."""
    result = {"n": len(pairs), "spearman": math.nan}
    if len(pairs) >= 3:
        values = np.asarray(pairs, np.float64)
        if np.ptp(values[:, 0]) > 0 and np.ptp(values[:, 1]) > 0:
            from scipy import stats  # on first use: it takes most of a second to import

            result["spearman"] = float(stats.spearmanr(values[:, 0], values[:, 1])[0])
    return result


def capture_all_neurons(model: LanguageModel | SiteReader, params, sequences: np.ndarray,
                        sites: tuple[str, ...], batch_size: int
                        ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every neuron's activation and the model's loss on `sequences` (`[count, seq_len]`).

    Returns `({site: [layers, tokens, width]} float32, nll [count, seq_len - 1])`: tokens in
    reading order (row-major over sequences); `nll[i, j]` is the model's negative
    log-likelihood of `sequences[i, j + 1]` given the sequence before it, in nats.
    """

    reader = as_reader(model)

    def forward(p, t):
        logits, neurons = reader.apply(p, t, sites)
        log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(log_probs, t[:, 1:, None], axis=-1)[..., 0]
        return neurons, nll

    forward = jax.jit(forward)
    # Filled in place, batch by batch: a list of batches joined at the end held every
    # activation twice at once.
    activations: dict[str, np.ndarray] = {}
    losses = []
    for start in range(0, sequences.shape[0], batch_size):
        neurons, nll = jax.device_get(forward(params, sequences[start:start + batch_size]))
        losses.append(np.asarray(nll, np.float64))
        for site in sites:
            layers, batch, seq_len, width = neurons[site].shape
            if site not in activations:
                activations[site] = np.empty((layers, sequences.size, width), np.float32)
            first = start * seq_len
            activations[site][:, first:first + batch * seq_len] = np.asarray(
                neurons[site], np.float32).reshape(layers, batch * seq_len, width)
    return activations, np.concatenate(losses)


def loss_above_floor(nll: np.ndarray, floor_nll: np.ndarray, labels: np.ndarray,
                     feature_names: list[str], *, sequences: np.ndarray,
                     end_of_text: int) -> dict:
    """Where a model's loss exceeds the planted entropy floor, by feature, on the targets where
    the floor is within the model's reach.

    `nll`: `[count, seq_len - 1]` from `capture_all_neurons` on `sequences` `[count, seq_len]`;
    `floor_nll` and `labels` describe the `count * seq_len` tokens of the sequences in order.
    The floor conditions on the whole document so far, the model on its sequence only: on a
    target whose document began before its sequence (29% of the planted validation targets at
    seq_len 128: a copied word whose source lies before the sequence, the topic's evidence) no
    model can reach it. So only the targets whose document starts inside their sequence count
    (`references.document_in_window`), for the floor and the model loss alike: there the floor
    is exactly what the best model that sees the sequence achieves. `tokens` is how many
    counted, of `targets`. For each feature: the fraction of counted targets carrying it, the
    mean excess (model - floor, nats) on those and its share of the overall excess per counted
    target (shares of overlapping features overlap).
    """
    count, predicted = nll.shape
    positions = (np.arange(count)[:, None] * (predicted + 1)
                 + np.arange(1, predicted + 1)[None, :]).reshape(-1)
    counted = document_in_window(sequences, end_of_text).reshape(-1)
    positions = positions[counted]
    excess = nll.reshape(-1)[counted] - floor_nll[positions]
    rows = labels[positions]
    by_feature = {}
    for index, name in enumerate(feature_names):
        mask = rows[:, index]
        if mask.any():
            by_feature[name] = {"tokens_fraction": float(mask.mean()),
                                "excess_per_token": float(excess[mask].mean()),
                                "excess_share": float(excess[mask].sum() / excess.size)}
    # NaN when no target counts (no document starts inside any sequence).
    return {"model_loss": _nanmean(nll.reshape(-1)[counted]),
            "floor": _nanmean(floor_nll[positions]), "excess": _nanmean(excess),
            "tokens": int(excess.size), "targets": int(nll.size), "by_feature": by_feature}


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _json_floats(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]
