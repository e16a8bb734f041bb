"""The study's comparison table, rebuilt from the runs' own artifacts alone.

One row per variant: parameters, validation loss and bits per byte, sparsity and the
interpretability scores of every site the variant has (pooled over layers and seeds, with 95%
intervals from `statistics`), and each score's difference from CRATE with its own interval.
Sites a variant lacks are absent from its row (empty in the CSV), never zero.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections import defaultdict
from pathlib import Path

from crate_jax.model import ModelConfig, paper_parameter_count
from crate_jax.report.statistics import difference_interval, pooled_mean_interval

SITES = ("ista", "mlp", "attn", "resid")
REPORTED_SPLITS = ("top_and_random", "random_only", "anthropic")
REFERENCE_VARIANT = "crate"


@functools.cache
def score_entries(path: Path) -> tuple[dict, ...]:
    """The per-neuron lines of one scores.jsonl (parsed once: they hold the simulations)."""
    return tuple(json.loads(line) for line in path.read_text().splitlines())


def _run_scores(run_dir: Path) -> dict[str, dict[str, list[float]]]:
    """`{site: {split: [score per neuron over all layers]}}` from a run's scores.jsonl files."""
    scores: dict = defaultdict(lambda: defaultdict(list))
    for path in sorted((run_dir / "interp" / "scores").glob("*/layer_*/scores.jsonl")):
        site = path.parent.parent.name
        for entry in score_entries(path):
            for split in REPORTED_SPLITS:
                if split not in entry["failures"]:
                    value = entry["scores"].get(split)
                    scores[site][split].append(math.nan if value is None else value)
    return scores


def _final_validation(run_dir: Path) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "validation"][-1]
    return {"loss": last["loss"], "bits_per_byte": last["bits_per_byte"], "config": config}


def build_table(workdir: str | Path, *, samples: int = 1000, seed: int = 0) -> list[dict]:
    """Rows of the comparison, in the study's variant order."""
    workdir = Path(workdir)
    study = json.loads((workdir / "study.json").read_text())
    runs_by_variant: dict[str, list[Path]] = defaultdict(list)
    for run in study["runs"].values():
        runs_by_variant[run["variant"]].append(workdir / run["workdir"])

    per_variant = {}
    for variant, run_dirs in runs_by_variant.items():
        validation = [_final_validation(d) for d in run_dirs]
        scores = [_run_scores(d) for d in run_dirs]
        sparsity = [json.loads((d / "interp" / "sparsity.json").read_text()) for d in run_dirs]
        per_variant[variant] = (validation, scores, sparsity)

    rows = []
    reference = per_variant.get(REFERENCE_VARIANT)
    for variant, (validation, scores, sparsity) in per_variant.items():
        model = ModelConfig.from_mapping(validation[0]["config"]["model"])
        row = {"variant": variant, "seeds": len(validation),
               "parameters": paper_parameter_count(model)}
        for key in ("loss", "bits_per_byte"):
            stats = pooled_mean_interval([[v[key]] for v in validation], samples=samples,
                                         seed=seed)
            row[f"validation_{key}"] = stats
        for site in SITES:
            if not any(site in s for s in scores):
                continue
            layers = [layer for s in sparsity for layer in s.get(site, {}).values()]
            row[f"{site}/zero_fraction"] = sum(x["zero_fraction"] for x in layers) / len(layers)
            row[f"{site}/mean_l0"] = sum(x["mean_l0"] for x in layers) / len(layers)
            for split in REPORTED_SPLITS:
                groups = [s[site][split] for s in scores if site in s]
                row[f"{site}/{split}"] = pooled_mean_interval(groups, samples=samples, seed=seed)
                if reference is not None and variant != REFERENCE_VARIANT and \
                        any(site in s for s in reference[1]):
                    baseline = [s[site][split] for s in reference[1] if site in s]
                    row[f"{site}/{split}/vs_crate"] = difference_interval(
                        groups, baseline, samples=samples, seed=seed)
        rows.append(row)
    return rows


def _flat(row: dict) -> dict[str, object]:
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            for part, number in value.items():
                flat[f"{key}/{part}"] = number
        else:
            flat[key] = value
    return flat


def write_table(rows: list[dict], out_dir: Path) -> None:
    """`ablation.json` (nested), `ablation.csv` (one column per number) and `ablation.md`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.json").write_text(json.dumps(rows, indent=2))
    flat = [_flat(row) for row in rows]
    columns = list(dict.fromkeys(key for row in flat for key in row))
    with open(out_dir / "ablation.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(flat)
    (out_dir / "ablation.md").write_text(markdown_table(rows))


def _interval_text(stats: dict | None, key: str = "mean") -> str:
    if not stats or stats.get(key) is None or math.isnan(stats[key]):
        return "—"
    if math.isnan(stats["ci_low"]):
        return f"{stats[key]:.3f}"
    return f"{stats[key]:.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"


def markdown_table(rows: list[dict]) -> str:
    """Like-for-like sites (`attn`, `resid`, which every variant has) and the sparse block."""
    header = ["variant", "seeds", "params", "val loss", "bits/byte"]
    columns = []
    for site in SITES:
        for split in REPORTED_SPLITS:
            if any(f"{site}/{split}" in row for row in rows):
                columns.append(f"{site}/{split}")
    sparse = [f"{site}/{kind}" for site in ("ista", "mlp") for kind in ("zero_fraction", "mean_l0")
              if any(f"{site}/{kind}" in row for row in rows)]
    lines = ["| " + " | ".join(header + sparse + columns + [f"{c} vs CRATE" for c in columns])
             + " |", "|" + "---|" * (len(header) + len(sparse) + 2 * len(columns))]
    for row in rows:
        cells = [row["variant"], str(row["seeds"]), f"{row['parameters'] / 1e6:.2f}M",
                 _interval_text(row["validation_loss"]),
                 _interval_text(row["validation_bits_per_byte"])]
        cells += [f"{row[c]:.3f}" if c in row else "—" for c in sparse]
        cells += [_interval_text(row.get(c)) for c in columns]
        cells += [_interval_text(row.get(f"{c}/vs_crate"), "difference") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
