"""The study's comparison table, rebuilt from the runs' own artifacts alone.

One row per variant: parameters, validation loss and bits per byte beside the reference losses
of its data (count-based unigram and bigram, and the entropy floor of a planted corpus) with a
flag on runs that do not beat the bigram reference, sparsity, the interpretability scores of
every site the variant has with the neurons they leave out, ground-truth recovery where the
corpus is planted, each score's difference from CRATE, and the scores' controls (`controls`: the
other-neuron baseline, the untrained control and the paired gain over it, the token reference).
The training run is the unit: each run gives one number per site and split (the mean over its
neurons, pooled over layers), a variant's interval is a t interval over its runs and a
difference from CRATE is Welch's t over runs (`statistics`). Sites a variant lacks are absent
from its row (empty in the CSV), never zero. `markdown_table` puts the
answer to the ablations (`answer`) and the controls before the wide table.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

from crate_jax.atomic_files import atomic_path, write_text_atomically
from crate_jax.layout import ReportLayout, RunLayout, StudyLayout
from crate_jax.model import ModelConfig, paper_parameter_count
from crate_jax.report import run_files
from crate_jax.report.answer import REFERENCE_VARIANT, answer_json, answer_markdown
from crate_jax.report.controls import add_controls, controls_markdown, neuron_scores, run_means
from crate_jax.report.floor_gap import floor_gap, floor_gap_markdown
from crate_jax.report.run_files import REFERENCE_KEYS, score_entries
from crate_jax.report.sae_table import add_sae_measures, sae_markdown
from crate_jax.report.text import (
    Cell,
    interval_text,
    markdown_rows,
    reference_text,
    training_text,
)
from crate_jax.report.validity import validity_markdown
from crate_jax.sae.sites import ordered_sites, sae_site
from crate_jax.statistics import run_difference, run_interval

REPORTED_SPLITS = ("top_and_random", "random_only", "anthropic", "detection", "fuzzing")
GROUND_TRUTH = ("recovery", "mean_selectivity", "spearman")
UNTRAINED_TRUTH = ("recovery", "mean_selectivity")  # also shown for the untrained controls
_SHORT_SPLIT = {"top_and_random": "t&r", "random_only": "r-o", "anthropic": "anth",
                "detection": "det", "fuzzing": "fuzz"}
_TRUTH_HEADER = {"recovery": "recovery (any layer)", "mean_selectivity": "selectivity",
                 "spearman": "score vs truth ρ"}

__all__ = ["REPORTED_SPLITS", "build_table", "markdown_table", "score_entries", "sites_of",
           "study_controls", "study_runs", "wide_table_cells", "write_table"]


def study_runs(workdir: str | Path) -> dict[str, list[tuple[str, Path]]]:
    """`{variant: [(run name, run dir), ...]}` in the study's order, from `study.json`."""
    study = StudyLayout(workdir)
    runs: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for name, run in json.loads(study.manifest.read_text())["runs"].items():
        runs[run["variant"]].append((name, study.workdir / run["workdir"]))
    return dict(runs)


def _left_out(run_dir: Path) -> dict:
    """`{site: {split: neurons left out (NaN score or failed), "neurons": scored}}`."""
    counts: dict = defaultdict(lambda: defaultdict(int))
    for site, _, path in RunLayout(run_dir).score_files():
        for entry in score_entries(path):
            counts[site]["neurons"] += 1
            for split in REPORTED_SPLITS:
                value = entry["scores"].get(split)
                if split in entry["failures"] or value is None or not math.isfinite(value):
                    counts[site][split] += 1
    return counts


def _mean_references(references: list[dict | None]) -> dict | None:
    present = [r for r in references if r is not None]
    if not present:
        return None
    merged = {}
    for key in REFERENCE_KEYS:
        values = [r[key] for r in present if r.get(key) is not None]
        merged[key] = sum(values) / len(values) if values else None
    merged["floor_source"] = present[0].get("floor_source")
    return merged


def variant_configs(workdir: str | Path) -> dict[str, str]:
    """`{variant: its config file's name}` (a copy such as `crate_copy=crate` runs `crate`)."""
    runs = json.loads(StudyLayout(workdir).manifest.read_text())["runs"].values()
    return {run["variant"]: run.get("config", run["variant"]) for run in runs}


def study_controls(workdir: str | Path) -> dict[str, list[tuple[str, Path]]]:
    """`{variant: [(run name, control dir), ...]}`: the untrained controls `study.json` lists
    (none in a study run without `study.controls`, or from before controls existed)."""
    study = StudyLayout(workdir)
    controls: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for name, run in json.loads(study.manifest.read_text()).get("controls", {}).items():
        controls[run["variant"]].append((name, study.workdir / run["workdir"]))
    return dict(controls)


def sites_of(rows: list[dict]) -> list[str]:
    """The sites any row has scores of (`ordered_sites`: the models' own, then SAE sites)."""
    first = REPORTED_SPLITS[0]
    return ordered_sites({key.split("/")[0] for row in rows for key in row
                          if key.count("/") == 1 and key.endswith(f"/{first}")})


def sae_counterparts(workdir: Path) -> dict[tuple[str, str], str]:
    """`{(variant, SAE site): CRATE's site}`: the SAEs a study compares with a site of CRATE's
    own, those as wide (latents per layer) as that site and as sparse (`sae.k`) as its measured
    L0 (`study.sae_k_from`, recorded in `study.json` as `sae_k`): a sparse code fitted afterwards
    against one inside the model, at equal width and L0."""
    manifest = json.loads(StudyLayout(workdir).manifest.read_text())
    matched = manifest.get("sae_k")
    if not matched:
        return {}
    variant, _, site = matched["from"].partition("/")
    if variant != REFERENCE_VARIANT:
        return {}
    runs = study_runs(workdir)
    widths = {layer.get("num_neurons") for _, d in runs[variant]
              for layer in run_files.sparsity(d)[site].values()}
    counterparts = {}
    for other, its_runs in runs.items():
        if other == variant:
            continue
        for name, evaluation in run_files.sae_evaluations(its_runs[0][1]).items():
            settings = evaluation["settings"]
            if (settings["kind"] != "relu_l1" and settings["k"] == matched["k"]
                    and widths == {settings["width"]}):
                counterparts[(other, sae_site(name))] = site
    return counterparts


def build_table(workdir: str | Path) -> list[dict]:
    """Rows of the comparison, in the study's variant order."""
    workdir = Path(workdir)
    per_variant = {}
    controls, configs = study_controls(workdir), variant_configs(workdir)
    counterparts = sae_counterparts(workdir)
    for variant, runs in study_runs(workdir).items():
        control_dirs = dict(controls.get(variant, []))
        truths = [run_files.ground_truth(d) for _, d in runs]  # read once: they are large
        per_variant[variant] = {
            "names": [name for name, _ in runs],
            "validation": [run_files.final_validation(d) for _, d in runs],
            "references": [run_files.references(d) for _, d in runs],
            "scores": [neuron_scores(d, REPORTED_SPLITS) for _, d in runs],
            "left_out": [_left_out(d) for _, d in runs],
            # Aligned with the runs: each run's gain is paired with its own control.
            "controls": [neuron_scores(control_dirs[name], REPORTED_SPLITS)
                         if name in control_dirs else None for name, _ in runs],
            "sparsity": [run_files.sparsity(d) for _, d in runs],
            "truth": [run_files.ground_truth_by_site(t) for t in truths],
            "control_truth": [run_files.ground_truth_by_site(run_files.ground_truth(d))
                              for d in control_dirs.values()],
            "saes": [run_files.sae_evaluations(d) for _, d in runs],
            "control_saes": [run_files.sae_evaluations(d) for d in control_dirs.values()],
            "floor_gap": floor_gap(truths)}

    rows = []
    reference = per_variant.get(REFERENCE_VARIANT)
    for variant, runs in per_variant.items():
        validation = runs["validation"]
        model = ModelConfig.from_mapping(validation[0]["config"]["model"])
        row = {"variant": variant, "config": configs[variant], "seeds": len(validation),
               "parameters": paper_parameter_count(model)}
        for key in ("loss", "bits_per_byte"):
            row[f"validation_{key}"] = run_interval([v[key] for v in validation])
        flags = [run_files.undertrained(v["loss"], r)
                 for v, r in zip(validation, runs["references"], strict=True)]
        row["references"] = _mean_references(runs["references"])
        if runs["floor_gap"] is not None:
            row["floor_gap"] = runs["floor_gap"]
        row["undertrained_runs"] = [n for n, f in zip(runs["names"], flags, strict=True) if f]
        row["undertrained"] = None if all(f is None for f in flags) else any(bool(f)
                                                                            for f in flags)
        row["runs"] = [{"name": n, "validation_loss": v["loss"], "undertrained": f,
                        "references": r}
                       for n, v, f, r in zip(runs["names"], validation, flags,
                                             runs["references"], strict=True)]
        scores, counts = runs["scores"], runs["left_out"]
        crate = (None if reference is None or variant == REFERENCE_VARIANT
                 else {"trained": reference["scores"], "untrained": reference["controls"]})
        for site in ordered_sites({site for s in scores for site in s}):
            # What "vs CRATE" compares with: CRATE's same site, or an SAE's counterpart.
            theirs_site = counterparts.get((variant, site), site)
            if theirs_site != site:
                row[f"{site}/vs_crate_site"] = theirs_site
            layers = [layer for s in runs["sparsity"] for layer in s.get(site, {}).values()]
            row[f"{site}/zero_fraction"] = sum(x["zero_fraction"] for x in layers) / len(layers)
            row[f"{site}/mean_l0"] = sum(x["mean_l0"] for x in layers) / len(layers)
            row[f"{site}/dead_neurons"] = sum(x["dead_neurons"] for x in layers)
            row[f"{site}/num_neurons"] = sum(x.get("num_neurons", 0) for x in layers)
            row[f"{site}/width"] = layers[0].get("num_neurons")  # per layer
            neurons = sum(c[site]["neurons"] for c in counts if site in c)
            baseline = reference["scores"] if reference is not None else []
            for split in REPORTED_SPLITS:
                means = run_means(scores, site, split)
                row[f"{site}/{split}"] = {
                    **run_interval(means), "neurons": neurons,
                    "left_out": sum(c[site][split] for c in counts if site in c)}
                theirs = run_means(baseline, theirs_site, split)
                if variant != REFERENCE_VARIANT and theirs:
                    row[f"{site}/{split}/vs_crate"] = run_difference(means, theirs)
            add_controls(row, site, REPORTED_SPLITS, scores, runs["controls"], crate,
                         theirs_site)
            _add_ground_truth(row, site, runs["truth"], runs["control_truth"], reference,
                              variant, theirs_site)
            add_sae_measures(row, site, runs["saes"], runs["control_saes"])
        rows.append(row)
    return rows


def _add_ground_truth(row: dict, site: str, truth: list[dict], control_truth: list[dict],
                      reference: dict | None, variant: str, theirs_site: str) -> None:
    """Per-site ground truth (`run_files.ground_truth_by_site`), mean over runs with a t
    interval over runs, and beside recovery and selectivity the same over the untrained
    controls (`<key>/untrained`: the level an untrained network reaches, chance for this
    architecture); `<site>/too_few_firing`: the neurons too few firing to judge, summed over
    runs and layers. Absent: no key."""
    for key in GROUND_TRUTH:
        values = [t[site][key] for t in truth if site in t]
        if not values:
            continue
        row[f"{site}/{key}"] = run_interval(values)
        untrained = [t[site][key] for t in control_truth if site in t]
        if key in UNTRAINED_TRUTH and untrained:
            row[f"{site}/{key}/untrained"] = run_interval(untrained)
        theirs = [t[theirs_site][key] for t in (reference or {}).get("truth", [])
                  if theirs_site in t]
        if key == "recovery" and variant != REFERENCE_VARIANT and theirs:
            row[f"{site}/recovery/vs_crate"] = run_difference(values, theirs)
    too_few = [t[site]["too_few_firing"] for t in truth if site in t]
    if too_few:
        row[f"{site}/too_few_firing"] = sum(too_few)


def _flat(row: dict) -> dict[str, object]:
    flat = {}
    for key, value in row.items():
        if key in ("runs", "floor_gap") or (key == "references" and value is None):
            continue  # per-run details: in the JSON only; absent references: empty cells
        if isinstance(value, dict):
            for part, number in value.items():
                flat[f"{key}/{part}"] = number
        elif isinstance(value, list):
            flat[key] = " ".join(value)
        else:
            flat[key] = "" if value is None else value
    if row.get("references") is None:
        flat.update({f"references/{k}": "" for k in REFERENCE_KEYS})
    return flat


def write_table(rows: list[dict], out_dir: Path, validity: dict | None = None) -> None:
    """`ablation.json` (the answer, the nested rows and which measure tracks the truth:
    `validity.validity_report`), `ablation.csv` (one column per number, one row per variant)
    and `ablation.md` (the validity table, the answer, then the wide table)."""
    report = ReportLayout(Path(out_dir))
    report.directory.mkdir(parents=True, exist_ok=True)
    saved = {"answer": answer_json(rows), "variants": rows}
    if validity is not None:
        saved["validity"] = validity
    write_text_atomically(report.ablation_json, json.dumps(saved, indent=2))
    flat = [_flat(row) for row in rows]
    columns = list(dict.fromkeys(key for row in flat for key in row))
    with atomic_path(report.ablation_csv) as temporary, open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(flat)
    write_text_atomically(report.ablation_markdown, markdown_table(rows, validity=validity))


def _left_out_text(row: dict, site: str) -> str:
    first = row[f"{site}/{REPORTED_SPLITS[0]}"]
    parts = [f"{_SHORT_SPLIT[s]} {row[f'{site}/{s}']['left_out']}/{first['neurons']}"
             for s in REPORTED_SPLITS]
    dead = f"; dead {row[f'{site}/dead_neurons']}/{row[f'{site}/num_neurons']}"
    return ", ".join(parts) + dead


def _counterpart_text(rows: list[dict], site: str) -> str:
    """` ista`: the site of CRATE's an SAE site is compared with (`sae_counterparts`)."""
    counterpart = next((row[f"{site}/vs_crate_site"] for row in rows
                        if f"{site}/vs_crate_site" in row), None)
    return f" {counterpart}" if counterpart else ""


def wide_table_cells(rows: list[dict]) -> tuple[list[str], list[list[Cell]]]:
    """The wide table's header and cells, shared by `ablation.md` and `index.html`."""
    def present(key: str) -> bool:
        return any(key in row for row in rows)

    columns = [f"{site}/{split}" for site in sites_of(rows) for split in REPORTED_SPLITS
               if present(f"{site}/{split}")]
    sparse = [f"{site}/{kind}" for site in ("ista", "mlp") for kind in ("zero_fraction", "mean_l0")
              if present(f"{site}/{kind}")]
    sites = sites_of(rows)
    truth = [f"{site}/{key}{untrained}" for site in sites for key in GROUND_TRUTH
             for untrained in ("", "/untrained") if present(f"{site}/{key}{untrained}")]
    header = (["variant", "seeds", "params", "val loss", "unigram ref", "bigram ref", "floor",
               "vs bigram", "bits/byte"] + sparse + columns
              + [f"{site} left out (NaN or failed; dead)" for site in sites]
              + [f"{c.split('/')[0]} {_TRUTH_HEADER[c.split('/')[1]]}"
                 + (" untrained" if c.endswith("/untrained") else "") for c in truth]
              + [f"{c} vs CRATE{_counterpart_text(rows, c.split('/')[0])}" for c in columns])
    body = []
    for row in rows:
        cells = [row["variant"], str(row["seeds"]), f"{row['parameters'] / 1e6:.2f}M",
                 interval_text(row["validation_loss"])]
        cells += [reference_text(row, key) for key in REFERENCE_KEYS]
        cells += [training_text(row), interval_text(row["validation_bits_per_byte"])]
        cells += [f"{row[c]:.3f}" if c in row else "—" for c in sparse]
        cells += [interval_text(row.get(c)) for c in columns]
        cells += [_left_out_text(row, site) if f"{site}/{REPORTED_SPLITS[0]}" in row else "—"
                  for site in sites]
        cells += [interval_text(row.get(c)) for c in truth]
        cells += [interval_text(row.get(f"{c}/vs_crate"), "difference") for c in columns]
        body.append(cells)
    return header, body


def markdown_table(rows: list[dict], *, answer_last: bool = False,
                   validity: dict | None = None) -> str:
    """Which measure tracks the truth (`validity`, where given) and the answer on it, the
    answer to the ablations on the headline measure (short table and one sentence each), the
    controls of the scores, the SAEs (`sae_table`), then the wide table: every variant with
    its reference losses, scores, neurons left out and differences.
    `answer_last=True` puts the answer after the wide table (for a terminal, where the last
    lines are the ones read)."""
    wide = ("## All variants\n\n"
            "Scores are mean over runs [95% t interval over runs]; reference losses in "
            "nats/token on the same validation targets; “undertrained”: the run's validation "
            "loss does not beat the bigram reference.\n\n" + markdown_rows(*wide_table_cells(rows)))
    answer = answer_markdown(rows)
    if validity:
        answer = f"{validity_markdown(validity)}\n{answer}"
    controls = controls_markdown(rows)
    answer = f"{controls}\n{answer}" if answer_last and controls else answer
    wide = f"{controls}\n{wide}" if controls and not answer_last else wide
    saes = sae_markdown(rows)
    wide = f"{saes}\n{wide}" if saes else wide
    gap = floor_gap_markdown(rows)
    wide = f"{gap}\n{wide}" if gap else wide
    return f"{wide}\n{answer}" if answer_last else f"{answer}\n{wide}"
