"""`report/index.html`: one static page with the answer, the table, the figures and a neuron viewer.

It opens from disk with no server and no network: the figures are sibling PNG files, the style
is inline and there is no script. The answer and the tables are rendered from the report's rows
by the functions that give `ablation.md` its cells, so the page and the Markdown never disagree;
runs that do not beat the bigram reference are flagged in a warning above them.

The viewer shows, for each variant and site (last layer), the best- and the worst-explained
neuron by top-and-random score (ties broken by neuron index), chosen only among neurons that
fire: at least `MIN_FIRING_TOKENS` evaluation tokens above zero and a maximum activation of at
least `MIN_RELATIVE_MAX` of the layer's median maximum. A dead neuron that twitches on one
token (a perfect score on a near-constant signal) is no one's best neuron. Each panel gives the
explanation with its activation scale, the scores, the neuron's maximum and firing frequency,
and top and random records with each token shaded by activation.
"""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path

from crate_jax.atomic_files import write_text_atomically
from crate_jax.interp.activations.records import NeuronRecord, from_json, max_activation
from crate_jax.interp.explanations.explanation import MAX_NORMALIZED_ACTIVATION
from crate_jax.interp.explanations.splits import explanation_records
from crate_jax.layout import ReportLayout, RunLayout, StudyLayout
from crate_jax.report.ablation_table import study_runs, wide_table_cells
from crate_jax.report.answer import answer_cells, answer_sentences
from crate_jax.report.controls import EXPLANATION as CONTROLS_EXPLANATION
from crate_jax.report.controls import controls_cells
from crate_jax.report.floor_gap import EXPLANATION as FLOOR_EXPLANATION
from crate_jax.report.floor_gap import floor_gap_cells
from crate_jax.report.run_files import neuron_statistics, score_lines
from crate_jax.report.sae_table import EXPLANATION as SAE_EXPLANATION
from crate_jax.report.sae_table import sae_cells
from crate_jax.report.text import Cell, seeds_text
from crate_jax.report.validity import (
    VALIDITY_EXPLANATION,
    best_measure_sentences,
    validity_cells,
)

NEURONS_PER_SITE = 2  # the best and the worst explained firing neuron of each site, per variant
MIN_FIRING_TOKENS = 5
MIN_RELATIVE_MAX = 0.1
_RECORDS_SHOWN = 3

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f4f4f4; }
img { max-width: 48%; margin: 0.5em 1%; }
.warning { background: #fff3cd; border: 1px solid #e0b400; padding: 0.5em 1em; }
.neuron { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; margin: 0.8em 0; }
.record { font-family: ui-monospace, monospace; font-size: 0.85em; margin: 0.2em 0;
          white-space: pre-wrap; }
.token { border-radius: 2px; }
"""


def _cell_html(cell: Cell) -> str:
    if isinstance(cell, str):
        return html.escape(cell)
    return f"<strong>{html.escape(cell.flag)}</strong>{html.escape(cell.rest)}"


def _table_html(header: list[str], body: list[list[Cell]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    rows = "".join("<tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in row) + "</tr>"
                   for row in body)
    return f'<table id="{table_id}"><tr>{head}</tr>{rows}</table>'


def _record_html(tokens: list[str], activations: list[float], scale: float) -> str:
    spans = []
    for token, activation in zip(tokens, activations, strict=True):
        alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, activation / scale))
        spans.append(f'<span class="token" title="{activation:.3f}" '
                     f'style="background: rgba(255, 120, 0, {alpha:.2f})">'
                     f"{html.escape(token)}</span>")
    return f'<div class="record">{"".join(spans)}</div>'


def neuron_html(title: str, variant: str, site: str, layer: int, neuron: NeuronRecord,
                 entry: dict, stats: dict | None, explanation_scale: float) -> str:
    scale = neuron.max_activation
    scores = ", ".join(f"{split.replace('_', '-')} {value:.3f}" if value is not None
                       else f"{split.replace('_', '-')} NaN"
                       for split, value in entry["scores"].items())
    reference = (entry.get("token_reference_scores") or {}).get("top_and_random")
    if reference is not None:
        scores += f"; token reference (context-free per-token means) top-and-random {reference:.3f}"
    firing = ("" if stats is None else f"max activation {stats['max']:.3g}, fires (&gt; 0) on "
              f"{100 * stats['firing_frequency']:.1f}% of {stats['count']:,} evaluation tokens")
    top = "".join(_record_html(r.tokens, r.activations, scale)
                  for r in neuron.most_positive_activation_records[:_RECORDS_SHOWN])
    random = "".join(_record_html(r.tokens, r.activations, scale)
                     for r in neuron.random_sample[:_RECORDS_SHOWN])
    return (f'<div class="neuron"><h4>{html.escape(title)}: {html.escape(variant)} · {site} '
            f'layer {layer} · neuron {neuron.neuron_id.neuron_index}</h4>'
            f'<p><b>Explanation:</b> {html.escape(entry.get("explanation") or "(failed)")}</p>'
            f"<p><b>Activation scale:</b> ({MAX_NORMALIZED_ACTIVATION}) = activation "
            f"{explanation_scale:.3g}, the largest on the records the explainer saw; "
            f"({MAX_NORMALIZED_ACTIVATION // 2}) = {explanation_scale / 2:.3g}; linear.</p>"
            f"<p><b>Scores:</b> {html.escape(scores)}</p>"
            f"<p><b>Activity:</b> {firing or 'no statistics file'}</p>"
            f"<p><b>Top records</b></p>{top}<p><b>Random records</b></p>{random}</div>")


def firing_neurons(stats: dict[int, dict]) -> set[int]:
    """The neurons of one layer that fire (see the module docstring); all, without statistics."""
    maxima = [s["max"] for s in stats.values() if s["max"] > 0]
    if not maxima:
        return set()
    threshold = MIN_RELATIVE_MAX * statistics.median(maxima)
    return {n for n, s in stats.items()
            if s["max"] >= threshold and s["max"] > 0
            and s["firing_frequency"] * s["count"] >= MIN_FIRING_TOKENS}


def ranked_by_score(entries: list[dict], stats: dict[int, dict]) -> list[dict]:
    """The score lines of the neurons that fire (`firing_neurons`; all of them without
    statistics) and have a top-and-random score, best explained first, ties by neuron index:
    the order the page and the notebook's panels pick neurons in."""
    firing = firing_neurons(stats) if stats else {entry["neuron"] for entry in entries}
    scored = [entry for entry in entries if entry["scores"].get("top_and_random") is not None
              and entry["neuron"] in firing]
    return sorted(scored, key=lambda entry: (-entry["scores"]["top_and_random"], entry["neuron"]))


def _chosen_neurons(run_dir: Path, variant: str) -> list[str]:
    """Panels for the best and worst explained firing neuron of each site's last layer."""
    layout = RunLayout(run_dir)
    config = json.loads(layout.config.read_text())
    record_protocol = config.get("interp", {}).get("protocol", "default")
    panels = []
    for site in layout.scored_sites():
        layer = max(layout.scored_layers(site))
        entries = score_lines(layout.scores(site, layer))
        stats = neuron_statistics(run_dir, site, layer)
        scored = ranked_by_score(entries, stats)
        chosen = list(zip(("best explained", "worst explained"),
                          scored[:1] + scored[-1:] if len(scored) > 1 else scored, strict=False))
        records = {r.neuron_id.neuron_index: r for r in
                   (from_json(line) for line in layout.records(site, layer).read_text()
                    .splitlines())}
        for title, entry in chosen:
            neuron = records[entry["neuron"]]
            scale = max_activation(explanation_records(neuron, "openai", record_protocol))
            panels.append(neuron_html(f"{title} (of {len(scored)} firing, scored)", variant,
                                       site, layer, neuron, entry, stats.get(entry["neuron"]),
                                       scale))
        if not chosen:
            panels.append(f'<div class="neuron"><h4>{html.escape(variant)} · {site} layer '
                          f"{layer}</h4><p>No scored neuron fires.</p></div>")
    return panels


def _bold(sentence: str) -> str:
    """A sentence with its markdown `**bold**` as HTML, everything else escaped."""
    parts = html.escape(sentence).split("**")
    return "".join(f"<strong>{part}</strong>" if k % 2 else part for k, part in enumerate(parts))


def _warning_html(rows: list[dict]) -> str:
    runs = [run for row in rows for run in row.get("runs", []) if run.get("undertrained")]
    if not runs:
        return ""
    names = ", ".join(f"{r['name']} (loss {r['validation_loss']:.3f} ≥ bigram "
                      f"{r['references']['bigram']:.3f})" for r in runs)
    return ('<p class="warning" id="undertrained"><strong>Undertrained:</strong> '
            f"{html.escape(names)} do not beat the bigram reference loss; no conclusion is "
            "drawn from them.</p>")


def _section_html(title: str, explanation: str, cells: tuple[list[str], list[list[Cell]]],
                  table_id: str) -> str:
    """A titled, explained table; nothing where the table has no rows."""
    header, body = cells
    if not body:
        return ""
    return (f"<h2>{html.escape(title)}</h2><p>{html.escape(explanation)}</p>"
            f"{_table_html(header, body, table_id)}")


def write_page(rows: list[dict], workdir: str | Path, out_dir: Path,
               figures: list[Path], validity: dict | None = None) -> Path:
    """Writes `index.html` into `out_dir` (beside the figures) from the report's `rows`
    (`ablation_table.build_table`) and `validity` (`validity.validity_report`); returns its
    path."""
    study = json.loads(StudyLayout(workdir).manifest.read_text())
    viewer = "".join(panel for variant, runs in study_runs(workdir).items()
                     for panel in _chosen_neurons(runs[0][1], variant))
    images = "".join(f'<img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
                     for p in figures)
    answer_header, answer_body = answer_cells(rows)
    answer = (_table_html(answer_header, answer_body, "answer-table") if answer_body else "")
    sentences = "".join(f"<p>{html.escape(s)}</p>" for s in answer_sentences(rows))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>crate_jax ablation "
            f"study</title><style>{_STYLE}</style></head><body>"
            f"<h1>Ablation study</h1><p>Variants: {html.escape(study['variants'])}; "
            f"{html.escape(seeds_text(study))}. Every number is a mean over training runs [95% t "
            "interval over runs]; “vs CRATE” columns are differences over runs (Welch's t, "
            "Holm-adjusted p in the answer); reference "
            "losses are nats/token of count-based models on the same validation targets.</p>"
            f"{_warning_html(rows)}"
            + _section_html("Which measure tracks the truth", VALIDITY_EXPLANATION,
                            validity_cells(validity), "validity-table")
            + "".join(f"<p>{_bold(sentence)}</p>"
                      for sentence in best_measure_sentences(validity))
            + f'<h2>Answer</h2>{answer}<div id="answer">{sentences}</div>'
            + _section_html("Loss above the entropy floor", FLOOR_EXPLANATION,
                            floor_gap_cells(rows), "floor-gap-table")
            + _section_html("Controls", CONTROLS_EXPLANATION, controls_cells(rows),
                            "controls-table")
            + _section_html("SAEs", SAE_EXPLANATION, sae_cells(rows), "sae-table")
            + "<h2>All variants</h2>"
            f"{_table_html(*wide_table_cells(rows), 'ablation-table')}"
            f"<h2>Figures</h2>{images}"
            f'<h2>Neurons</h2><div id="neuron-viewer">{viewer}</div></body></html>')
    path = ReportLayout(Path(out_dir)).page
    write_text_atomically(path, page)
    return path
