"""The study's SAEs beside the neurons they are compared with: how sparse, how faithful, how
explainable.

An SAE's latents are a neuron site of its run (`sae_<name>`), scored like any other, so their
scores are in the variant's row already. This adds what only an SAE has, from each run's
`sae/<name>/evaluation.json` (held-out text): L0, the fraction of variance unexplained (FVU), the
dead fraction, the next-token loss with the SAE spliced in and the share of the site's loss it
recovers, each the mean over the SAE's layers per run, then a mean over runs with its t interval
over runs; and the same FVU for the SAEs fitted on the untrained controls. The table puts each
SAE beside the site it reads (the variant's own neurons) and CRATE's site it is compared with
(`ablation_table.sae_counterparts`), with their L0 and scores: the trade-off a reader weighs is
reconstruction and loss kept against sparsity and explainability.
"""

from __future__ import annotations

import math

from crate_jax.report.answer import REFERENCE_VARIANT
from crate_jax.report.text import interval_text, section_markdown
from crate_jax.sae.sites import sae_name
from crate_jax.statistics import run_interval

MEASURES = ("l0", "fvu", "dead_fraction", "loss_clean", "loss_spliced", "loss_recovered")
_SCORES = ("top_and_random", "random_only", "recovery")


def _layer_mean(evaluation: dict, measure: str) -> float:
    values = [layer[measure] for layer in evaluation["layers"].values()
              if layer.get(measure) is not None]
    return sum(values) / len(values) if values else math.nan


def add_sae_measures(row: dict, site: str, evaluations: list[dict],
                     control_evaluations: list[dict]) -> None:
    """`<site>/sae`: the SAE's settings and the site it reads; `<site>/sae/<measure>`: a run
    interval of each measure (`fvu/untrained`: of the controls' SAEs). `evaluations`: each run's
    `{name: evaluation}` (`run_files.sae_evaluations`)."""
    name = sae_name(site)
    ours = [e[name] for e in evaluations if name in e]
    if not ours:
        return
    row[f"{site}/sae"] = {**ours[0]["settings"], "site": ours[0]["site"]}
    for measure in MEASURES:
        values = [_layer_mean(e, measure) for e in ours]
        if any(math.isfinite(v) for v in values):
            row[f"{site}/sae/{measure}"] = run_interval(values)
    untrained = [_layer_mean(e[name], "fvu") for e in control_evaluations if name in e]
    if untrained:
        row[f"{site}/sae/fvu/untrained"] = run_interval(untrained)


def sae_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One line per SAE, after the neurons it reads and before CRATE's site it is compared
    with; empty where the study has no SAE."""
    header = ["variant", "site", "latents/layer", "k", "L0", "FVU", "FVU untrained", "dead",
              "loss clean", "loss SAE spliced", "loss recovered", "top-and-random",
              "random-only", "recovery (any layer)"]
    by_variant = {row["variant"]: row for row in rows}
    body = []
    for row in rows:
        saes = [key.removesuffix("/sae") for key in row if key.endswith("/sae")]
        if not saes:
            continue
        bases = dict.fromkeys(row[f"{site}/sae"]["site"] for site in saes)
        for base in bases:
            body.append(_neuron_line(row, base))
        for site in saes:
            sae = row[f"{site}/sae"]
            k = "n/a" if sae["kind"] == "relu_l1" else str(sae["k"])
            body.append([row["variant"], f"{site} ({sae['kind']} on {sae['site']})",
                         str(sae["width"]), k]
                        + [interval_text(row.get(f"{site}/sae/{m}"))
                           for m in ("l0", "fvu", "fvu/untrained", "dead_fraction",
                                     "loss_clean", "loss_spliced", "loss_recovered")]
                        + [interval_text(row.get(f"{site}/{key}")) for key in _SCORES])
        counterparts = dict.fromkeys(row[key] for key in row if key.endswith("/vs_crate_site"))
        for site in counterparts:
            body.append(_neuron_line(by_variant[REFERENCE_VARIANT], site))
    return header, body


def _neuron_line(row: dict, site: str) -> list[str]:
    """A model's own site in the SAE table: its neurons' L0 and scores, no reconstruction."""
    l0, width = row.get(f"{site}/mean_l0"), row.get(f"{site}/width")
    return ([row["variant"], f"{site} (the model's neurons)", str(width or "—"), "—",
             "—" if l0 is None else f"{l0:.1f}"] + ["—"] * 6
            + [interval_text(row.get(f"{site}/{key}")) for key in _SCORES])


EXPLANATION = (
    "Each SAE (one per layer of the site it reads, fitted on the trained model's activations of "
    "its training text) beside the model's own neurons: L0 = active latents (neurons) per "
    "token; FVU = fraction of variance unexplained on held-out text, and the same for the SAEs "
    "fitted the same way on the untrained controls; dead = latents that never fire there; "
    "losses in nats/token with each layer's activations replaced by the SAE's reconstruction, "
    "loss recovered = (mean-ablated − spliced) / (mean-ablated − clean); scores as in the "
    "tables above. Each a mean over the layers of a run, then over runs [95% t interval over "
    "runs].")


def sae_markdown(rows: list[dict]) -> str:
    """`## SAEs`: the explanation and the table; empty without SAEs."""
    return section_markdown("SAEs", EXPLANATION, sae_cells(rows))
