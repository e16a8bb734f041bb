"""Both ends of the scale beside every score: what chance, an untrained network and token
identity alone already give.

A score means little on its own. Per variant, site and split the report puts beside the trained
models' mean explanation score:
- `other_neuron`: each neuron scored with another neuron's explanation (`interp.random_baseline`):
  what an explanation unrelated to the neuron gets, about 0;
- `untrained`: the same variant's untrained controls (`study.controls`: each run's step 0,
  explained and scored with the run's own config), and `gain`, trained minus untrained with its
  interval. A random network maps each token to a fixed activation and a token-level explanation
  captures that, so a large part of a trained score can be there before any learning;
- `oracle`: the token oracle, the score of the best per-token explanation (each held-out token
  simulated by its mean activation on evaluation text outside the neuron's records), and
  `above_oracle`, how many neurons' explanations beat it: what an explainer adds beyond token
  identity (a token-level explainer should not, except by chance);
- `gain_vs_crate`: whether an ablation changes the gain over the untrained control, the ablated
  variant's gain minus CRATE's, with its interval (four independently resampled groups).
Every number is a mean [95% interval over neurons and seeds] from `statistics`, with its neurons.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from crate_jax.layout import RunLayout
from crate_jax.report.run_files import score_entries
from crate_jax.report.text import interval_text, section_markdown
from crate_jax.statistics import contrast_interval, difference_interval, pooled_mean_interval

SHOWN_SPLIT = "top_and_random"  # the split of the controls table in ablation.md, page, README


def _value(scores: dict | None, split: str) -> float:
    value = (scores or {}).get(split)
    return math.nan if value is None else float(value)


def neuron_scores(run_dir: Path, splits: tuple[str, ...]) -> dict:
    """`{site: {split: {"score": [...], "oracle": [...], "other_neuron": [...]}}}`, one value
    per neuron of every layer of one run (NaN where the number is missing), in step: a neuron
    whose split failed is left out of all three, as the score table leaves it out."""
    lists: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for site, _, path in RunLayout(run_dir).score_files():
        for entry in score_entries(path):
            for split in splits:
                if split in entry["failures"]:
                    continue
                lists[site][split]["score"].append(_value(entry["scores"], split))
                lists[site][split]["oracle"].append(_value(entry.get("oracle_scores"), split))
                lists[site][split]["other_neuron"].append(
                    _value(entry.get("baseline_scores"), split))
    return lists


def _groups(runs: list[dict], site: str, split: str, kind: str) -> list[list[float]]:
    """One list per run (seed) of `kind` values: the groups the bootstrap resamples."""
    return [run[site][split][kind] for run in runs if site in run]


def _finite(values: list[list[float]]) -> int:
    return sum(math.isfinite(v) for group in values for v in group)


def _above(runs: list[dict], site: str, split: str) -> dict:
    """`{"count", "of"}`: neurons whose explanation scores strictly above their oracle, of the
    neurons that have both numbers."""
    pairs = [(s, o) for run in runs if site in run
             for s, o in zip(run[site][split]["score"], run[site][split]["oracle"], strict=True)
             if math.isfinite(s) and math.isfinite(o)]
    return {"count": sum(s > o for s, o in pairs), "of": len(pairs)}


def add_controls(row: dict, site: str, splits: tuple[str, ...], trained: list[dict],
                 untrained: list[dict], crate: dict | None, *, samples: int,
                 seed: int) -> None:
    """Adds the controls of one site to a variant's `row` (see the module docstring).

    `trained`, `untrained`: `neuron_scores` of the variant's runs and of their untrained
    controls (empty without controls); `crate`: `{"trained", "untrained"}` of CRATE's, or None
    for CRATE itself or a study without it. A number the study lacks is absent, never zero."""
    for split in splits:
        scores = _groups(trained, site, split, "score")
        for kind in ("other_neuron", "oracle"):
            groups = _groups(trained, site, split, kind)
            if _finite(groups):
                row[f"{site}/{split}/{kind}"] = {
                    **pooled_mean_interval(groups, samples=samples, seed=seed),
                    "neurons": sum(len(g) for g in groups)}
        if f"{site}/{split}/oracle" in row:
            row[f"{site}/{split}/above_oracle"] = _above(trained, site, split)
        controls = _groups(untrained, site, split, "score")
        if not _finite(controls):
            continue
        row[f"{site}/{split}/untrained"] = {
            **pooled_mean_interval(controls, samples=samples, seed=seed),
            "neurons": sum(len(g) for g in controls)}
        row[f"{site}/{split}/gain"] = difference_interval(scores, controls, samples=samples,
                                                          seed=seed)
        theirs = [_groups((crate or {}).get(kind, []), site, split, "score")
                  for kind in ("trained", "untrained")]
        if _finite(theirs[0]) and _finite(theirs[1]):
            row[f"{site}/{split}/gain_vs_crate"] = contrast_interval(
                [(1, scores), (-1, controls), (-1, theirs[0]), (1, theirs[1])],
                samples=samples, seed=seed)


def controls_cells(rows: list[dict], split: str = SHOWN_SPLIT) -> tuple[list[str], list[list]]:
    """The controls table's header and cells (one row per variant and site), shared by
    `ablation.md`, the page and the README; empty body where no row has any control."""
    name = split.replace("_", "-")
    header = ["variant", "site", "neurons", f"trained {name}", "other neuron's explanation",
              "untrained (same seeds)", "gain over untrained", "token oracle",
              "explanation > oracle"]
    body = []
    for row in rows:
        for site in _sites(row):
            key = f"{site}/{split}"
            if not any(f"{key}/{kind}" in row for kind in ("untrained", "oracle")):
                continue
            above = row.get(f"{key}/above_oracle")
            body.append([row["variant"], site, str(row[key].get("neurons", "")),
                         interval_text(row[key]), interval_text(row.get(f"{key}/other_neuron")),
                         interval_text(row.get(f"{key}/untrained")),
                         interval_text(row.get(f"{key}/gain"), "difference"),
                         interval_text(row.get(f"{key}/oracle")),
                         f"{above['count']}/{above['of']}" if above else "—"])
    return header, body


def _sites(row: dict) -> list[str]:
    """The sites of a row that have scores, in the row's order."""
    return list(dict.fromkeys(key.split("/")[0] for key in row
                              if key.endswith(f"/{SHOWN_SPLIT}") and key.count("/") == 1))


EXPLANATION = (
    "Controls of the top-and-random score, per variant and site: “other neuron's explanation” "
    "scores each neuron with another neuron's explanation (chance); “untrained” is the same "
    "variant at its initialisation (same seeds, same evaluation, no training), “gain” the "
    "trained score minus that, with its interval; the token oracle simulates every held-out "
    "token by its mean activation on evaluation text outside the neuron's records (the best "
    "any per-token explanation can do), and the last column counts the neurons whose "
    "explanation beats their oracle.")


def controls_markdown(rows: list[dict]) -> str:
    """`## Controls`: the explanation and the table; empty where no row has any control."""
    return section_markdown("Controls", EXPLANATION, controls_cells(rows))
