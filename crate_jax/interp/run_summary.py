"""The per-run interpretability summary: `interp/summary.json` and `interp/report.md`.

Per site and layer: mean score per split with a 95% bootstrap confidence interval, how many
neurons were scored, how many scores were NaN (constant simulations) or failed, the random
baseline, the token reference (a context-free per-token prediction) and how often an explanation
beats it, and sparsity. The seeds, config and versions behind the numbers are written with them.
"""

from __future__ import annotations

import math

import numpy as np

from crate_jax.interp.explanations.neuron_scoring import SCORES
from crate_jax.statistics import neuron_interval

SPLITS = SCORES


def mean_with_confidence_interval(scores: list[float], *, samples: int, seed: int) -> dict:
    """`{"mean", "ci_low", "ci_high", "n", "n_nan"}` of one layer's scores by the bootstrap over
    the run's neurons; NaN (a constant simulation) is counted in `n_nan` and left out, None dropped.
    With fewer than two scores the interval is NaN: one neuron has no spread to resample."""
    values = np.asarray([s for s in scores if s is not None], np.float64)
    return {**neuron_interval(values, samples=samples, seed=seed),
            "n_nan": int(np.isnan(values).sum())}


def layer_summary(scores: dict[int, dict], sparsity: dict, *, samples: int, seed: int) -> dict:
    """Aggregates one (site, layer)'s per-neuron score lines: per split the explanations'
    scores, the random baseline's, the token reference's, and how many neurons' explanations
    score above their token reference (`explanation_above_token_reference`: `{"count", "of"}`
    neurons with both)."""
    entries = list(scores.values())
    summary = {"neurons": len(entries), "sparsity": sparsity, "splits": {}, "baseline": {},
               "token_reference": {}, "explanation_above_token_reference": {}}
    for split in SPLITS:
        if entries and not any(split in e["scores"] or split in e["failures"] for e in entries):
            continue  # not scored here (a compared explainer's Anthropic split)
        values = [math.nan if e["scores"].get(split) is None else e["scores"][split]
                  for e in entries if split not in e["failures"]]
        summary["splits"][split] = {
            **mean_with_confidence_interval(values, samples=samples, seed=seed),
            "n_failed": sum(split in e["failures"] for e in entries)}
        baseline = [math.nan if e.get("baseline_scores", {}).get(split) is None
                    else e["baseline_scores"][split]
                    for e in entries if "baseline_scores" in e]
        if baseline:
            summary["baseline"][split] = mean_with_confidence_interval(baseline,
                                                                       samples=samples, seed=seed)
        with_reference = [e for e in entries if split in e.get("token_reference_scores", {})
                          and split not in e["failures"]]
        if with_reference:
            reference = [_number(e["token_reference_scores"].get(split)) for e in with_reference]
            summary["token_reference"][split] = mean_with_confidence_interval(
                reference, samples=samples, seed=seed)
            pairs = [(_number(e["scores"].get(split)), o)
                     for e, o in zip(with_reference, reference, strict=True)]
            pairs = [(s, o) for s, o in pairs if math.isfinite(s) and math.isfinite(o)]
            summary["explanation_above_token_reference"][split] = {
                "count": sum(s > o for s, o in pairs),
                                                          "of": len(pairs)}
    return summary


def _number(value: float | None) -> float:
    return math.nan if value is None else value


def _cell(stats: dict) -> str:
    if not stats or math.isnan(stats["mean"]):
        return "n/a"
    interval = ("" if math.isnan(stats["ci_low"])
                else f" [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]")
    return f"{stats['mean']:.3f}{interval}"


def _count(above: dict | None) -> str:
    return "n/a" if not above else f"{above['count']}/{above['of']}"


def markdown_report(summary: dict) -> str:
    """A table people can paste: one row per site and layer."""
    lines = [f"# Interpretability of `{summary['variant']}` (size {summary['size']})", "",
             f"Explainer `{summary['explainer']}`; {summary['evaluation_tokens']:,} held-out "
             f"tokens; seed {summary['seed']}; scores are Pearson r between simulated and true "
             "activations, mean [95% bootstrap CI] over neurons; NaN = constant simulation.", "",
             "| site | layer | neurons | top-and-random | random-only | top-only | anthropic "
             "| detection | detection AUROC | fuzzing "
             "| random baseline (t&r) | token reference (t&r) | explanation > reference (t&r) "
             "| NaN scores | zeros | L0/token | dead |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for site, layers in summary["sites"].items():
        for layer, entry in layers.items():
            splits, sparsity = entry["splits"], entry["sparsity"]
            nans = sum(splits[s]["n_nan"] for s in SPLITS if s in splits)
            above = entry.get("explanation_above_token_reference", {}).get("top_and_random")
            lines.append(
                f"| {site} | {layer} | {entry['neurons']} | "
                + " | ".join(_cell(splits.get(s, {})) for s in SPLITS)
                + f" | {_cell(entry['baseline'].get('top_and_random', {}))}"
                f" | {_cell(entry.get('token_reference', {}).get('top_and_random', {}))}"
                f" | {_count(above)}"
                f" | {nans} | "
                f"{sparsity['zero_fraction']:.3f} | {sparsity['mean_l0']:.1f} | "
                f"{sparsity['dead_neurons']} |")
    lines += ["", "Detection and fuzzing (after EleutherAI's delphi, `judging`): balanced "
              "accuracy of the explanation's yes/no judgements of held-out 32-token contexts "
              "(does the neuron fire here; are the highlighted tokens its firing ones), 0.5 "
              "= chance; detection AUROC from the simulator's graded answer.",
              "", "Token reference: each held-out token predicted by its mean activation on the "
              "evaluation text outside the neuron's records, scored the same way: a "
              "context-free per-token reference (not a bound: the scored top records are "
              "chosen for high activations, the means are not); the next column counts the "
              "neurons whose explanation beats it.",
              "", "Sparsity: `zeros` is the fraction of exactly-zero activations, `L0/token` the "
              "mean number of non-zero neurons per token, `dead` the neurons never active on the "
              "evaluation text (near-zero variants with |a| <= eps in summary.json).", ""]
    if summary.get("saes"):
        lines += sae_table(summary["saes"])
    return "\n".join(lines)


def sae_table(saes: dict) -> list[str]:
    """The SAEs whose latents are scored above (`sae_<name>` rows): how sparse, how faithful,
    and how much of the next-token loss survives their splice (`sae/<name>/evaluation.json`)."""
    lines = ["| SAE | layer | kind | latents | k | L0 | FVU | dead | loss clean | spliced "
             "| mean-ablated | loss recovered |", "|---" * 12 + "|"]
    for name, evaluation in saes.items():
        settings = evaluation["settings"]
        k = "n/a" if settings["kind"] == "relu_l1" else settings["k"]
        for layer, values in evaluation["layers"].items():
            recovered = values["loss_recovered"]
            lines.append(
                f"| sae_{name} | {layer} | {settings['kind']} | {settings['width']} | {k} | "
                f"{values['l0']:.1f} | {values['fvu']:.3f} | {values['dead_fraction']:.1%} | "
                f"{values['loss_clean']:.3f} | {values['loss_spliced']:.3f} | "
                f"{values['loss_mean_ablated']:.3f} | "
                f"{'n/a' if recovered is None else f'{recovered:.3f}'} |")
    lines += ["", "SAEs (the `sae` stage, on held-out text): `L0` latents active per token, "
              "`FVU` the fraction of variance unexplained, `dead` latents that never fire; "
              "losses in nats per token with the site's activations at that layer replaced by "
              "the SAE's reconstruction (spliced) or by their mean; loss recovered = "
              "(mean-ablated - spliced) / (mean-ablated - clean).", ""]
    return lines
