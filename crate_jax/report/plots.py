"""The study's figures (PNG, matplotlib, sized for a paper column), from run artifacts alone.

- `scores_by_layer_<split>.png`: mean score per layer for each variant, one panel per site,
  with 95% t intervals over runs (each run's mean over its neurons), and its controls as markers
  of the same colour: the untrained controls' mean (open circles) and the token reference's
  (crosses);
- `sparsity_by_layer.png`: fraction of exact zeros per layer, one panel per site;
- `sae_fvu_vs_l0.png` (a study with SAEs): each SAE's reconstruction against its sparsity, and
  its latents' top-and-random score against its reconstruction;
- `validation_loss.png`: validation loss against training step, one line per run, with the
  reference losses of the data (unigram, bigram, entropy floor) as labelled horizontal lines;
- `score_vs_loss.png`: each run's final validation loss against its mean `resid` score
  (the site every variant has), per split.

Each variant keeps one colour in every panel of every figure (its place in the study's order),
and every legend sits outside the axes, so it hides no data and names every variant even where
a panel lacks some (a variant without a site is absent from that panel, not zero).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display, works on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from crate_jax.atomic_files import atomic_path  # noqa: E402
from crate_jax.layout import ReportLayout, RunLayout  # noqa: E402
from crate_jax.report import run_files  # noqa: E402
from crate_jax.report.ablation_table import (  # noqa: E402
    REPORTED_SPLITS,
    study_controls,
    study_runs,
)
from crate_jax.report.run_files import REFERENCE_KEYS, references, score_entries  # noqa: E402
from crate_jax.sae.sites import ordered_sites, sae_site  # noqa: E402
from crate_jax.statistics import run_interval, run_mean  # noqa: E402

_FIGURE = dict(figsize=(7.0, 2.6), dpi=150, layout="constrained")
_REFERENCE_STYLE = {"unigram": ":", "bigram": "--", "floor": "-."}


def _runs(workdir: Path) -> dict[str, list[Path]]:
    return {variant: [run_dir for _, run_dir in runs]
            for variant, runs in study_runs(workdir).items()}


def variant_colours(variants: list[str]) -> dict[str, str]:
    """One colour per variant, by its place in the study, the same in every panel and figure."""
    return {variant: f"C{index % 10}" for index, variant in enumerate(variants)}


def _variant_legend(figure, colours: dict[str, str], **style) -> None:
    """A legend of every variant, outside the axes (right of them), in the study's order."""
    handles = [Line2D([], [], color=colour, **style) for colour in colours.values()]
    figure.legend(handles, list(colours), loc="outside right upper", fontsize=7)


def _layer_scores(run_dir: Path, site: str, split: str,
                  field: str = "scores") -> dict[int, list[float]]:
    """`{layer: [score per neuron]}` of one run; `field="token_reference_scores"`: the token
    reference's."""
    scores = {}
    for _, layer, path in RunLayout(run_dir).score_files(site):
        entries = score_entries(path)
        scores[layer] = [math.nan if e.get(field, {}).get(split) is None else e[field][split]
                         for e in entries if split not in e["failures"]]
    return scores


def _layer_means(run_dirs: list[Path], site: str, split: str,
                 field: str = "scores") -> dict[int, dict]:
    """`{layer: mean over runs [t interval over runs] of each run's mean over its neurons}` of
    one variant and site (the training run is the unit, as in the tables)."""
    per_run = [_layer_scores(d, site, split, field) for d in run_dirs]
    layers = sorted({layer for r in per_run for layer in r})
    return {layer: run_interval([run_mean(r[layer]) for r in per_run if layer in r])
            for layer in layers}


def _sites_present(runs: dict[str, list[Path]]) -> list[str]:
    return ordered_sites({site for ds in runs.values() for d in ds
                          for site in RunLayout(d).scored_sites()})


def scores_by_layer_figure(runs: dict[str, list[Path]], split: str,
                           controls: dict[str, list[Path]] | None = None) -> Figure:
    """Filled markers with intervals: the trained runs; open markers on a dotted line: the
    same variant's untrained controls; crosses: the token reference of the trained runs."""
    sites = _sites_present(runs)
    colours = variant_colours(list(runs))
    figure, axes = plt.subplots(1, len(sites), sharey=True, squeeze=False, **_FIGURE)
    shown = set()
    for axis, site in zip(axes[0], sites, strict=True):
        site_layers: set[int] = set()
        for variant, run_dirs in runs.items():
            trained = _layer_means(run_dirs, site, split)
            if not trained:
                continue  # this variant has no such site: absent, not zero
            site_layers.update(trained)
            layers = sorted(trained)
            # A small sideways shift per variant keeps overlapping intervals readable.
            shift = (list(colours).index(variant) - (len(colours) - 1) / 2) * 0.08
            x = [layer + shift for layer in layers]
            means = [trained[layer]["mean"] for layer in layers]
            errors = np.nan_to_num([[trained[layer]["mean"] - trained[layer]["ci_low"]
                                     for layer in layers],
                                    [trained[layer]["ci_high"] - trained[layer]["mean"]
                                     for layer in layers]])  # one run: no interval
            axis.errorbar(x, means, yerr=errors, marker="o", capsize=3, label=variant,
                          color=colours[variant])
            untrained = _layer_means((controls or {}).get(variant, []), site, split)
            if untrained:
                axis.plot(x, [untrained.get(layer, {}).get("mean", math.nan) for layer in layers],
                          marker="o", markerfacecolor="none", linestyle=":",
                          color=colours[variant])
                shown.add("untrained")
            reference = _layer_means(run_dirs, site, split, "token_reference_scores")
            if any(math.isfinite(o["mean"]) for o in reference.values()):
                axis.plot(x, [reference[layer]["mean"] for layer in layers], marker="x",
                          linestyle="", color=colours[variant])
                shown.add("token_reference")
        axis.set_title(site)
        axis.set_xlabel("layer")
        _layer_axis(axis, site_layers)
    axes[0][0].set_ylabel(f"score ({split.replace('_', '-')})")
    handles = [Line2D([], [], color=colour, marker="o") for colour in colours.values()]
    labels = list(colours)
    if "untrained" in shown:
        handles.append(Line2D([], [], color="0.35", marker="o", markerfacecolor="none",
                              linestyle=":"))
        labels.append("untrained control")
    if "token_reference" in shown:
        handles.append(Line2D([], [], color="0.35", marker="x", linestyle=""))
        labels.append("token reference")
    figure.legend(handles, labels, loc="outside right upper", fontsize=7)
    return figure


def _layer_axis(axis, layers: set[int]) -> None:
    """Integer layer ticks, with room for the variants' sideways shifts (a locator alone picks
    fractional ticks when every point is shifted off the integers)."""
    if layers:
        axis.set_xticks(sorted(layers))
        axis.set_xlim(min(layers) - 0.5, max(layers) + 0.5)


def sparsity_by_layer_figure(runs: dict[str, list[Path]]) -> Figure:
    sites = _sites_present(runs)
    colours = variant_colours(list(runs))
    figure, axes = plt.subplots(1, len(sites), sharey=True, squeeze=False, **_FIGURE)
    for axis, site in zip(axes[0], sites, strict=True):
        for variant, run_dirs in runs.items():
            sparsity = [run_files.sparsity(d).get(site) for d in run_dirs]
            sparsity = [s for s in sparsity if s]
            if not sparsity:
                continue
            layers = sorted(int(layer) for layer in sparsity[0])
            zeros = [sum(s[str(layer)]["zero_fraction"] for s in sparsity) / len(sparsity)
                     for layer in layers]
            axis.plot(layers, zeros, marker="o", label=variant, color=colours[variant])
        axis.set_title(site)
        axis.set_xlabel("layer")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("fraction of exact zeros")
    _variant_legend(figure, colours, marker="o")
    return figure


def _validation_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    records = run_files.validation_records(run_dir)
    return [r["step"] for r in records], [r["loss"] for r in records]


def _reference_losses(runs: dict[str, list[Path]]) -> dict[str, float]:
    """The mean over runs of each reference loss the runs have (they share their data)."""
    found = [r for ds in runs.values() for r in (references(d) for d in ds) if r is not None]
    values = {key: [r[key] for r in found if r.get(key) is not None] for key in REFERENCE_KEYS}
    return {key: sum(v) / len(v) for key, v in values.items() if v}


def validation_loss_figure(runs: dict[str, list[Path]]) -> Figure:
    colours = variant_colours(list(runs))
    figure, axis = plt.subplots(**{**_FIGURE, "figsize": (5.5, 3.0)})
    for variant, run_dirs in runs.items():
        for run_dir in run_dirs:
            steps, losses = _validation_curve(run_dir)
            axis.plot(steps, losses, color=colours[variant], alpha=0.8, marker=".")
    handles = [Line2D([], [], color=c) for c in colours.values()]
    labels = list(colours)
    for key, value in _reference_losses(runs).items():
        axis.axhline(value, color="0.35", linestyle=_REFERENCE_STYLE[key], linewidth=1)
        handles.append(Line2D([], [], color="0.35", linestyle=_REFERENCE_STYLE[key]))
        labels.append(f"{'entropy floor' if key == 'floor' else key + ' reference'} "
                      f"{value:.2f}")
    axis.set_xlabel("step")
    axis.set_ylabel("validation loss (nats/token)")
    figure.legend(handles, labels, loc="outside right upper", fontsize=7)
    return figure


def score_vs_loss_figure(runs: dict[str, list[Path]]) -> Figure:
    colours = variant_colours(list(runs))
    figure, axes = plt.subplots(1, len(REPORTED_SPLITS), sharey=False, squeeze=False,
                                **_FIGURE)
    for axis, split in zip(axes[0], REPORTED_SPLITS, strict=True):
        for variant, run_dirs in runs.items():
            losses, scores = [], []
            for run_dir in run_dirs:
                values = [v for layer in _layer_scores(run_dir, "resid", split).values()
                          for v in layer]
                losses.append(_validation_curve(run_dir)[1][-1])
                scores.append(run_mean(values))
            axis.scatter(losses, scores, color=colours[variant], label=variant, s=14)
        axis.set_title(f"resid, {split.replace('_', '-')}", fontsize=8)
        axis.set_xlabel("validation loss")
    axes[0][0].set_ylabel("mean score")
    _variant_legend(figure, colours, marker="o", linestyle="")
    return figure


_SAE_MARKERS = ("o", "s", "^", "D", "v")


def sae_tradeoff_figure(runs: dict[str, list[Path]],
                        controls: dict[str, list[Path]] | None = None) -> Figure | None:
    """Left: FVU against L0 of every SAE of the study, one point per run and layer (filled:
    fitted on the trained model; open: on its untrained control). Right: each run's mean
    top-and-random score of the SAE's latents against its FVU (mean over layers), the
    reconstruction beside the explainability. One colour per variant, one marker per SAE; None
    where the study has no SAE."""
    colours = variant_colours(list(runs))
    names = sorted({name for ds in runs.values() for d in ds
                    for name in run_files.sae_evaluations(d)})
    if not names:
        return None
    figure, (tradeoff, scores) = plt.subplots(1, 2, **_FIGURE)
    handles, labels = [], []
    for variant, run_dirs in runs.items():
        for untrained, dirs in ((False, run_dirs), (True, (controls or {}).get(variant, []))):
            for name in names:
                evaluations = {d: run_files.sae_evaluations(d).get(name) for d in dirs}
                evaluations = {d: e for d, e in evaluations.items() if e}
                if not evaluations:
                    continue
                style = dict(marker=_SAE_MARKERS[names.index(name) % len(_SAE_MARKERS)],
                             color=colours[variant], linestyle="",
                             markerfacecolor="none" if untrained else colours[variant])
                layers = [layer for e in evaluations.values() for layer in e["layers"].values()]
                tradeoff.plot([x["l0"] for x in layers], [x["fvu"] for x in layers], **style)
                fvu = [float(np.mean([x["fvu"] for x in e["layers"].values()]))
                       for e in evaluations.values()]
                score = [run_mean([v for layer in _layer_scores(d, sae_site(name),
                                                                "top_and_random").values()
                                   for v in layer]) for d in evaluations]
                scores.plot(fvu, score, **style)
                handles.append(Line2D([], [], **style))
                labels.append(f"{variant} {sae_site(name)}{' untrained' if untrained else ''}")
    tradeoff.set_xlabel("L0 (active latents per token)")
    tradeoff.set_ylabel("FVU (held-out)")
    scores.set_xlabel("FVU (held-out, mean over layers)")
    scores.set_ylabel("mean top-and-random score")
    tradeoff.set_yscale("log")
    figure.legend(handles, labels, loc="outside right upper", fontsize=7)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lstrip("."))
    plt.close(figure)
    return path


def write_plots(workdir: str | Path, out_dir: Path) -> list[Path]:
    """Every figure of the study into `out_dir`; returns their paths."""
    runs = _runs(Path(workdir))
    controls = {variant: [control_dir for _, control_dir in pairs]
                for variant, pairs in study_controls(Path(workdir)).items()}
    report = ReportLayout(Path(out_dir))
    report.directory.mkdir(parents=True, exist_ok=True)
    paths = [_save(scores_by_layer_figure(runs, split, controls),
                   report.figure(f"scores_by_layer_{split}")) for split in REPORTED_SPLITS]
    for name, build in (("sparsity_by_layer", sparsity_by_layer_figure),
                        ("validation_loss", validation_loss_figure),
                        ("score_vs_loss", score_vs_loss_figure)):
        paths.append(_save(build(runs), report.figure(name)))
    tradeoff = sae_tradeoff_figure(runs, controls)
    if tradeoff is not None:
        paths.append(_save(tradeoff, report.figure("sae_fvu_vs_l0")))
    return paths
