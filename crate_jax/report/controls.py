"""Both ends of the scale beside every score: what chance, an untrained network and token
identity alone already give.

A score means little on its own. Per variant, site and split the report puts beside the trained
models' mean explanation score:
- `other_neuron`: each neuron scored with another neuron's explanation (`interp.random_baseline`):
  what an explanation unrelated to the neuron gets, about 0;
- `untrained`: the same variant's untrained controls (`study.controls`: each run's step 0,
  explained and scored with the run's own config), and `gain`, trained minus untrained, **paired**:
  a control scores the same neuron ids as its run, so each run's gain is the mean over its
  neurons of (trained score - the same neuron's control score), over the neurons finite on both
  sides (`paired`; `unpaired` counts those left out). A random network maps each token to a
  fixed activation and a token-level explanation captures that, so a large part of a trained
  score can be there before any learning;
- `token_reference`: the context-free per-token reference (each held-out token simulated by the
  neuron's mean activation on that token in evaluation text outside the neuron's records, see
  `token_reference`), and `above_token_reference`, how many neurons' explanations beat it. It is a
  reference, not a bound: its means are fitted on text outside the records, mostly low
  activations, while the scored top records are chosen for high ones;
- `gain_vs_crate`: whether an ablation changes the gain over the untrained control: the ablated
  variant's per-run gains against CRATE's (`statistics.run_difference`).
Every number is a mean over runs with its 95% interval over runs (`statistics.run_interval`):
the training run is the unit of replication. `neurons` counts the neurons behind it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from crate_jax.layout import RunLayout
from crate_jax.report.run_files import score_entries
from crate_jax.report.text import interval_text, section_markdown
from crate_jax.statistics import paired_run_gain, run_difference, run_interval, run_mean

SHOWN_SPLIT = "top_and_random"  # the split of the controls table in ablation.md, page, README
KINDS = ("score", "token_reference", "other_neuron")
_FIELDS = {"score": "scores", "token_reference": "token_reference_scores",
           "other_neuron": "baseline_scores"}  # where each kind sits in a scores.jsonl line


def _value(scores: dict | None, split: str) -> float:
    value = (scores or {}).get(split)
    return math.nan if value is None else float(value)


def neuron_scores(run_dir: Path, splits: tuple[str, ...], explainer: str | None = None) -> dict:
    """`{site: {split: {"neuron": [(layer, index)], "score": [...], "token_reference": [...],
    "other_neuron": [...]}}}`, one value per neuron of every layer of one run (NaN where the
    number is missing), in step: a neuron whose split failed is left out of all of them, as the
    score table leaves it out. Of the headline explainer, or of compared `explainer`."""
    lists: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for site, layer, path in RunLayout(run_dir).score_files(explainer=explainer):
        for entry in score_entries(path):
            for split in splits:
                if split in entry["failures"]:
                    continue
                lists[site][split]["neuron"].append((layer, entry["neuron"]))
                for kind in KINDS:
                    lists[site][split][kind].append(_value(entry.get(_FIELDS[kind]), split))
    return lists


def run_means(runs: list[dict], site: str, split: str, kind: str = "score") -> list[float]:
    """One number per run that has the site: the mean of its neurons' `kind` values."""
    return [run_mean(run[site][split][kind]) for run in runs if site in run]


def run_gains(trained: list[dict], untrained: list[dict | None], site: str,
              split: str) -> list[dict]:
    """Per run with a control: `statistics.paired_run_gain` of its scores over the control's,
    neuron by neuron. `untrained` is aligned with `trained` (None: that run has no control)."""
    gains = []
    for run, control in zip(trained, untrained, strict=True):
        if control is None or site not in run or site not in control:
            continue
        ours, theirs = run[site][split], control[site][split]
        gains.append(paired_run_gain(dict(zip(ours["neuron"], ours["score"], strict=True)),
                                     dict(zip(theirs["neuron"], theirs["score"], strict=True))))
    return gains


def _neurons(runs: list[dict], site: str, split: str) -> int:
    return sum(len(run[site][split]["score"]) for run in runs if site in run)


def _above(runs: list[dict], site: str, split: str) -> dict:
    """`{"count", "of"}`: neurons whose explanation scores strictly above their token
    reference, of the neurons that have both numbers."""
    pairs = [(s, o) for run in runs if site in run
             for s, o in zip(run[site][split]["score"], run[site][split]["token_reference"],
                             strict=True)
             if math.isfinite(s) and math.isfinite(o)]
    return {"count": sum(s > o for s, o in pairs), "of": len(pairs)}


def add_controls(row: dict, site: str, splits: tuple[str, ...], trained: list[dict],
                 untrained: list[dict | None], crate: dict | None,
                 crate_site: str | None = None) -> None:
    """Adds the controls of one site to a variant's `row` (see the module docstring).

    `trained`: `neuron_scores` of the variant's runs; `untrained`: of their untrained controls,
    aligned with `trained` (None where a run has none); `crate`: `{"trained", "untrained"}` of
    CRATE's, or None for CRATE itself or a study without it; `crate_site`: the site of CRATE's
    the gain is compared with (default: `site`; an SAE's counterpart, `ablation_table`). A
    number the study lacks is absent, never zero."""
    for split in splits:
        for kind in ("other_neuron", "token_reference"):
            means = run_means(trained, site, split, kind)
            if any(math.isfinite(m) for m in means):
                row[f"{site}/{split}/{kind}"] = {**run_interval(means),
                                                 "neurons": _neurons(trained, site, split)}
        if f"{site}/{split}/token_reference" in row:
            row[f"{site}/{split}/above_token_reference"] = _above(trained, site, split)
        controls = [c for c in untrained if c is not None]
        means = run_means(controls, site, split)
        if not any(math.isfinite(m) for m in means):
            continue
        row[f"{site}/{split}/untrained"] = {**run_interval(means),
                                            "neurons": _neurons(controls, site, split)}
        gains = run_gains(trained, untrained, site, split)
        row[f"{site}/{split}/gain"] = {
            **run_interval([g["gain"] for g in gains]),
            "paired": sum(g["paired"] for g in gains),
            "unpaired": sum(g["unpaired"] for g in gains)}
        if crate:
            theirs = run_gains(crate["trained"], crate["untrained"], crate_site or site, split)
            if theirs:
                row[f"{site}/{split}/gain_vs_crate"] = run_difference(
                    [g["gain"] for g in gains], [g["gain"] for g in theirs])


def controls_cells(rows: list[dict], split: str = SHOWN_SPLIT) -> tuple[list[str], list[list]]:
    """The controls table's header and cells (one row per variant and site), shared by
    `ablation.md`, the page and the README; empty body where no row has any control."""
    name = split.replace("_", "-")
    header = ["variant", "site", "runs", "neurons", f"trained {name}",
              "other neuron's explanation", "untrained (same seeds)",
              "paired gain over untrained", "neurons unpaired", "token reference",
              "explanation > token reference"]
    body = []
    for row in rows:
        for site in _sites(row):
            key = f"{site}/{split}"
            if not any(f"{key}/{kind}" in row for kind in ("untrained", "token_reference")):
                continue
            above, gain = row.get(f"{key}/above_token_reference"), row.get(f"{key}/gain")
            body.append([row["variant"], site, str(row[key]["n"]),
                         str(row[key].get("neurons", "")),
                         interval_text(row[key]), interval_text(row.get(f"{key}/other_neuron")),
                         interval_text(row.get(f"{key}/untrained")), interval_text(gain),
                         str(gain["unpaired"]) if gain else "—",
                         interval_text(row.get(f"{key}/token_reference")),
                         f"{above['count']}/{above['of']}" if above else "—"])
    return header, body


def _sites(row: dict) -> list[str]:
    """The sites of a row that have scores, in the row's order."""
    return list(dict.fromkeys(key.split("/")[0] for key in row
                              if key.endswith(f"/{SHOWN_SPLIT}") and key.count("/") == 1))


EXPLANATION = (
    "Controls of the top-and-random score, per variant and site, each a mean over runs [95% t "
    "interval over runs]: “other neuron's explanation” scores each neuron with another neuron's "
    "explanation (chance); “untrained” is the same variant at its initialisation (same seeds, "
    "same evaluation, no training); the gain is paired: per run, the mean over neurons of the "
    "trained score minus the same neuron's untrained score (neurons missing or not finite on "
    "either side are left out and counted); the token reference simulates every held-out token "
    "by the neuron's mean activation on that token in evaluation text outside its records (a "
    "context-free per-token reference, not a bound: the scored top records are chosen for high "
    "activations, the means are not), and the last column counts the neurons whose "
    "explanation beats it.")


def controls_markdown(rows: list[dict]) -> str:
    """`## Controls`: the explanation and the table; empty where no row has any control."""
    return section_markdown("Controls", EXPLANATION, controls_cells(rows))
