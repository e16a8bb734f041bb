"""What the report reads from one run's workdir, and nothing else: every reader of a run file.

Files a run may lack (older runs, natural text) read as `None`, never as zero:
- `references.json` (written by the train stage): nats/token of count-based unigram and bigram
  models on exactly the validation targets of the run's validation loss, and the entropy floor
  of a planted corpus (`null` for natural text);
- `interp/ground_truth.json` (planted corpus only): per site and layer, how well the neurons
  recover the planted features, how selective each neuron is for its best feature, and how the
  explanation score ranks against that truth.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np

from crate_jax.interp.explanations.neuron_scoring import read_neuron_lines
from crate_jax.interp.ground_truth import RECOVERY_AUROC
from crate_jax.layout import RunLayout
from crate_jax.metrics_file import read_metrics

REFERENCE_KEYS = ("unigram", "bigram", "floor")


def score_lines(path: Path) -> list[dict]:
    """The whole last line of each neuron of one scores.jsonl (a rerun that retried a failed
    neuron appended its new line after the old one), read as the interp stage reads it: a line
    cut by a stopped run is skipped, never rewritten from here."""
    return list(read_neuron_lines(path, repair=False).values())


@functools.cache
def score_entries(path: Path) -> tuple[dict, ...]:
    """`score_lines`, parsed once, without their simulations.

    Only the scores are kept (`neuron`, `scores`, `failures`, and where present the token
    reference's `token_reference_scores` and the other-neuron baseline's `baseline_scores`): the
    simulations are most of each line and no table or figure needs them (the cache held 1.7 GB
    of them for the default study).
    """
    kept = ("neuron", "scores", "failures", "token_reference_scores", "baseline_scores")
    return tuple({key: entry[key] for key in kept if key in entry}
                 for entry in score_lines(path))


def final_validation(run_dir: Path) -> dict:
    """`{"loss", "bits_per_byte", "steps": [...], "losses": [...], "config"}` of a run."""
    config = json.loads(RunLayout(run_dir).config.read_text())
    validation = validation_records(run_dir)
    return {"loss": validation[-1]["loss"], "bits_per_byte": validation[-1]["bits_per_byte"],
            "steps": [r["step"] for r in validation], "losses": [r["loss"] for r in validation],
            "config": config}


def validation_records(run_dir: Path) -> list[dict]:
    """The run's validation records of `metrics.jsonl`, in the order they were written."""
    return [record for record in read_metrics(run_dir) if record["split"] == "validation"]


def sparsity(run_dir: Path) -> dict:
    """`interp/sparsity.json`: `{site: {layer: {"zero_fraction", "mean_l0", ...}}}`."""
    return json.loads(RunLayout(run_dir).sparsity.read_text())


def sae_evaluations(run_dir: Path) -> dict[str, dict]:
    """`{name: sae/<name>/evaluation.json}` of the SAEs whose latents the run's interp stage
    scored (its `summary.json`); empty for a run without SAEs."""
    return json.loads(RunLayout(run_dir).summary.read_text()).get("saes") or {}


def references(run_dir: Path) -> dict | None:
    """The run's reference losses (`references.json`), or None where the run has none."""
    path = RunLayout(run_dir).references
    if not path.exists():
        return None
    return json.loads(path.read_text())


def undertrained(loss: float, reference: dict | None) -> bool | None:
    """True where the validation loss does not beat the bigram reference; None: unknown."""
    if reference is None or reference.get("bigram") is None:
        return None
    return not loss < reference["bigram"]


def ground_truth(run_dir: Path) -> dict | None:
    """`interp/ground_truth.json`, or None where the run has none (natural text)."""
    path = RunLayout(run_dir).ground_truth
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _number(value) -> float:
    """A JSON number, with `null` (and NaN written as such) read as NaN."""
    return math.nan if value is None else float(value)


def ground_truth_by_site(truth: dict | None) -> dict[str, dict[str, float]]:
    """Per site, over all its layers:

    - `recovery`: the fraction of features some neuron of any layer detects (AUROC at least the
      file's `recovery_auroc`), not the mean of the per-layer recoveries;
    - `mean_selectivity`: the mean selectivity of the judged neurons of all layers (per-layer
      means weighted by their judged neurons), and `too_few_firing`, the neurons left out;
    - `spearman` (score vs truth): per-layer rank correlations weighted by their neuron counts.

    NaN where no layer has the number (a file from before selectivity has none).
    """
    pooled = {}
    threshold = (truth or {}).get("recovery_auroc", RECOVERY_AUROC)
    for site, layers in (truth or {}).get("sites", {}).items():
        entries = list(layers.values())
        if not entries:
            continue
        spearman = [(_number(e["score_vs_truth"].get("spearman")), e["score_vs_truth"].get("n", 0))
                    for e in entries if e.get("score_vs_truth")]
        best: dict[str, float] = {}
        for entry in entries:
            for name, feature in entry.get("features", {}).items():
                best[name] = max(best.get(name, -math.inf), _number(feature.get("auroc")))
        selectivity = [(_number(e.get("mean_selectivity")), e.get("judged_neurons", 0))
                       for e in entries]
        pooled[site] = {
            "recovery": (sum(a >= threshold for a in best.values()) / len(best) if best
                         else math.nan),
            "mean_selectivity": _weighted_mean(selectivity),
            "too_few_firing": sum(e.get("too_few_firing", 0) for e in entries),
            "spearman": _weighted_mean(spearman)}
    return pooled


def _weighted_mean(pairs: list[tuple[float, int]]) -> float:
    """`sum(value * weight) / sum(weight)` over the finite values of positive weight; NaN if
    there are none."""
    kept = [(value, weight) for value, weight in pairs if math.isfinite(value) and weight]
    total = sum(weight for _, weight in kept)
    return sum(value * weight for value, weight in kept) / total if total else math.nan


def neuron_statistics(run_dir: Path, site: str, layer: int) -> dict[int, dict[str, float]]:
    """`{neuron index: {"max", "firing_frequency", "count"}}` from the records' statistics file;
    empty where the run has none."""
    path = RunLayout(run_dir).record_statistics(site, layer)
    if not path.exists():
        return {}
    with np.load(path) as data:
        return {int(n): {"max": float(m), "firing_frequency": float(f), "count": int(c)}
                for n, m, f, c in zip(data["neuron_index"], data["max"],
                                      data["firing_frequency"], data["count"], strict=True)}
