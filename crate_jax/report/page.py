"""`report/index.html`: one static page with the table, the figures and a neuron viewer.

It opens from disk with no server and no network: the figures are sibling PNG files, the style
is inline and there is no script. The viewer shows, for each variant, the best- and worst-
explained neurons of its sites (by top-and-random score, ties broken by neuron index): the
explanation, its scores, and the top and random records with each token shaded by activation.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from crate_jax.interp.records import NeuronRecord, from_json

NEURONS_PER_SITE = 2  # the best and the worst explained neuron of each site, per variant
_RECORDS_SHOWN = 3

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; }
table { border-collapse: collapse; font-size: 0.8em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f4f4f4; }
img { max-width: 48%; margin: 0.5em 1%; }
.neuron { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; margin: 0.8em 0; }
.record { font-family: ui-monospace, monospace; font-size: 0.85em; margin: 0.2em 0;
          white-space: pre-wrap; }
.token { border-radius: 2px; }
"""


def _table_html(markdown: str) -> str:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table id="ablation-table"><tr>{head}</tr>{body}</table>'


def _record_html(tokens: list[str], activations: list[float], scale: float) -> str:
    spans = []
    for token, activation in zip(tokens, activations, strict=True):
        alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, activation / scale))
        spans.append(f'<span class="token" title="{activation:.3f}" '
                     f'style="background: rgba(255, 120, 0, {alpha:.2f})">'
                     f"{html.escape(token)}</span>")
    return f'<div class="record">{"".join(spans)}</div>'


def _neuron_html(variant: str, site: str, layer: int, neuron: NeuronRecord, entry: dict) -> str:
    scale = neuron.max_activation
    scores = ", ".join(f"{split.replace('_', '-')} {value:.3f}" if value is not None
                       else f"{split.replace('_', '-')} NaN"
                       for split, value in entry["scores"].items())
    top = "".join(_record_html(r.tokens, r.activations, scale)
                  for r in neuron.most_positive_activation_records[:_RECORDS_SHOWN])
    random = "".join(_record_html(r.tokens, r.activations, scale)
                     for r in neuron.random_sample[:_RECORDS_SHOWN])
    return (f'<div class="neuron"><h4>{html.escape(variant)} · {site} layer {layer} · neuron '
            f'{neuron.neuron_id.neuron_index}</h4>'
            f'<p><b>Explanation:</b> {html.escape(entry.get("explanation") or "(failed)")}</p>'
            f"<p><b>Scores:</b> {html.escape(scores)}</p>"
            f"<p><b>Top records</b></p>{top}<p><b>Random records</b></p>{random}</div>")


def _chosen_neurons(run_dir: Path, variant: str) -> list[str]:
    """Panels for the best and worst explained neuron of each site's last layer."""
    panels = []
    for site_dir in sorted(p for p in (run_dir / "interp" / "scores").iterdir() if p.is_dir()):
        site = site_dir.name
        layer = max(int(p.name.split("_")[1]) for p in site_dir.glob("layer_*"))
        scores_path = site_dir / f"layer_{layer}" / "scores.jsonl"
        entries = [json.loads(line) for line in scores_path.read_text().splitlines()]
        scored = sorted((e for e in entries if e["scores"].get("top_and_random") is not None),
                        key=lambda e: (-e["scores"]["top_and_random"], e["neuron"]))
        chosen = scored[:1] + scored[-1:] if len(scored) > 1 else scored
        records_path = run_dir / "interp" / "records" / site / f"layer_{layer}.jsonl"
        records = {r.neuron_id.neuron_index: r for r in
                   (from_json(line) for line in records_path.read_text().splitlines())}
        panels += [_neuron_html(variant, site, layer, records[e["neuron"]], e) for e in chosen]
    return panels


def write_page(workdir: str | Path, out_dir: Path, figures: list[Path]) -> Path:
    """Writes `out_dir/index.html` (after `ablation.md` and the figures); returns its path."""
    workdir = Path(workdir)
    study = json.loads((workdir / "study.json").read_text())
    first_run = {}
    for run in study["runs"].values():
        first_run.setdefault(run["variant"], workdir / run["workdir"])
    viewer = "".join(panel for variant, run_dir in first_run.items()
                     for panel in _chosen_neurons(run_dir, variant))
    images = "".join(f'<img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
                     for p in figures)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>crate_jax ablation "
            f"study</title><style>{_STYLE}</style></head><body>"
            f"<h1>Ablation study</h1><p>Variants: {html.escape(study['variants'])}; seeds: "
            f"{html.escape(str(study['seeds']))}. Scores are mean [95% CI] over neurons and "
            "seeds; “vs CRATE” columns are differences with their own intervals.</p>"
            f"<h2>Table</h2>{_table_html((out_dir / 'ablation.md').read_text())}"
            f"<h2>Figures</h2>{images}"
            f'<h2>Neurons</h2><div id="neuron-viewer">{viewer}</div></body></html>')
    path = out_dir / "index.html"
    path.write_text(page)
    return path
