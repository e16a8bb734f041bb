"""The study's figures (PNG, matplotlib, sized for a paper column), from run artifacts alone.

- `scores_by_layer_<split>.png`: mean score per layer for each variant, one panel per site,
  with 95% bootstrap intervals over neurons and seeds;
- `sparsity_by_layer.png`: fraction of exact zeros per layer, one panel per site;
- `validation_loss.png`: validation loss against training step, one line per run;
- `score_vs_loss.png`: each run's final validation loss against its mean `resid` score
  (the site every variant has), per split.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, works on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from crate_jax.report.ablation_table import (  # noqa: E402
    REPORTED_SPLITS,
    SITES,
    score_entries,
)
from crate_jax.report.statistics import pooled_mean_interval  # noqa: E402

_FIGURE = dict(figsize=(7.0, 2.6), dpi=150)


def _runs(workdir: Path) -> dict[str, list[Path]]:
    study = json.loads((workdir / "study.json").read_text())
    runs: dict[str, list[Path]] = defaultdict(list)
    for run in study["runs"].values():
        runs[run["variant"]].append(workdir / run["workdir"])
    return runs


def _layer_scores(run_dir: Path, site: str, split: str) -> dict[int, list[float]]:
    scores = {}
    for path in sorted((run_dir / "interp" / "scores" / site).glob("layer_*/scores.jsonl")):
        layer = int(path.parent.name.split("_")[1])
        entries = score_entries(path)
        scores[layer] = [math.nan if e["scores"].get(split) is None else e["scores"][split]
                         for e in entries if split not in e["failures"]]
    return scores


def _sites_present(runs: dict[str, list[Path]]) -> list[str]:
    return [site for site in SITES
            if any((d / "interp" / "scores" / site).exists() for ds in runs.values() for d in ds)]


def plot_scores_by_layer(runs: dict[str, list[Path]], split: str, path: Path) -> None:
    sites = _sites_present(runs)
    figure, axes = plt.subplots(1, len(sites), sharey=True, squeeze=False, **_FIGURE)
    for axis, site in zip(axes[0], sites, strict=True):
        for variant, run_dirs in runs.items():
            per_run = [_layer_scores(d, site, split) for d in run_dirs]
            layers = sorted({layer for r in per_run for layer in r})
            if not layers:
                continue  # this variant has no such site: absent, not zero
            stats = [pooled_mean_interval([r.get(layer, []) for r in per_run], samples=300)
                     for layer in layers]
            means = [s["mean"] for s in stats]
            errors = [[s["mean"] - s["ci_low"] for s in stats],
                      [s["ci_high"] - s["mean"] for s in stats]]
            axis.errorbar(layers, means, yerr=errors, marker="o", capsize=3, label=variant)
        axis.set_title(site)
        axis.set_xlabel("layer")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel(f"score ({split.replace('_', '-')})")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_sparsity_by_layer(runs: dict[str, list[Path]], path: Path) -> None:
    sites = _sites_present(runs)
    figure, axes = plt.subplots(1, len(sites), sharey=True, squeeze=False, **_FIGURE)
    for axis, site in zip(axes[0], sites, strict=True):
        for variant, run_dirs in runs.items():
            sparsity = [json.loads((d / "interp" / "sparsity.json").read_text()).get(site)
                        for d in run_dirs]
            sparsity = [s for s in sparsity if s]
            if not sparsity:
                continue
            layers = sorted(int(layer) for layer in sparsity[0])
            zeros = [sum(s[str(layer)]["zero_fraction"] for s in sparsity) / len(sparsity)
                     for layer in layers]
            axis.plot(layers, zeros, marker="o", label=variant)
        axis.set_title(site)
        axis.set_xlabel("layer")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("fraction of exact zeros")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _validation_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    points = [(r["step"], r["loss"]) for r in records if r["split"] == "validation"]
    return [p[0] for p in points], [p[1] for p in points]


def plot_validation_loss(runs: dict[str, list[Path]], path: Path) -> None:
    figure, axis = plt.subplots(**{**_FIGURE, "figsize": (4.0, 3.0)})
    for index, (variant, run_dirs) in enumerate(runs.items()):
        for k, run_dir in enumerate(run_dirs):
            steps, losses = _validation_curve(run_dir)
            axis.plot(steps, losses, color=f"C{index}", alpha=0.8,
                      label=variant if k == 0 else None)
    axis.set_xlabel("step")
    axis.set_ylabel("validation loss (nats/token)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_score_vs_loss(runs: dict[str, list[Path]], path: Path) -> None:
    figure, axes = plt.subplots(1, len(REPORTED_SPLITS), sharey=False, squeeze=False,
                                **_FIGURE)
    for axis, split in zip(axes[0], REPORTED_SPLITS, strict=True):
        for index, (variant, run_dirs) in enumerate(runs.items()):
            losses, scores = [], []
            for run_dir in run_dirs:
                values = [v for layer in _layer_scores(run_dir, "resid", split).values()
                          for v in layer]
                losses.append(_validation_curve(run_dir)[1][-1])
                scores.append(pooled_mean_interval([values], samples=1)["mean"])
            axis.scatter(losses, scores, color=f"C{index}", label=variant, s=14)
        axis.set_title(f"resid, {split.replace('_', '-')}", fontsize=8)
        axis.set_xlabel("validation loss")
    axes[0][0].set_ylabel("mean score")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_plots(workdir: str | Path, out_dir: Path) -> list[Path]:
    """Every figure of the study into `out_dir`; returns their paths."""
    runs = _runs(Path(workdir))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in REPORTED_SPLITS:
        paths.append(out_dir / f"scores_by_layer_{split}.png")
        plot_scores_by_layer(runs, split, paths[-1])
    for name, plot in (("sparsity_by_layer.png", plot_sparsity_by_layer),
                       ("validation_loss.png", plot_validation_loss),
                       ("score_vs_loss.png", plot_score_vs_loss)):
        paths.append(out_dir / name)
        plot(runs, paths[-1])
    return paths
