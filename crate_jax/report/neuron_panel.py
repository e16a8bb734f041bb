"""A run's chosen neurons as one self-contained HTML block, for a notebook or any other page.

The demo notebook (`notebooks/demo.ipynb`) shows a few neurons of the run it just trained. Each
panel is the study page's own (`page.neuron_html`: the explanation with its activation scale,
the scores, the neuron's activity, top and random records with each token shaded by activation),
so the page and the notebook never disagree on what a neuron looks like. This module picks the
neurons and wraps their panels in a block whose style is scoped to it: a notebook's outputs share
one page with the notebook itself, so the page's own style (which sets `body`) is not used.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

from crate_jax.interp.activations.capture import read_records
from crate_jax.interp.activations.records import max_activation
from crate_jax.interp.explanations.splits import explanation_records
from crate_jax.layout import RunLayout
from crate_jax.report.page import neuron_html, ranked_by_score
from crate_jax.report.run_files import neuron_statistics, score_lines
from crate_jax.report.text import interval_text

# The block's class: what a test (or a reader's own style sheet) finds the panels by.
PANEL_CLASS = "crate-neuron-panel"

_STYLE = f"""
.{PANEL_CLASS} {{ font-family: system-ui, sans-serif; overflow-wrap: anywhere; }}
.{PANEL_CLASS} .neuron {{ border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em;
                          margin: 0.8em 0; }}
.{PANEL_CLASS} .record {{ font-family: ui-monospace, monospace; font-size: 0.85em;
                          margin: 0.2em 0; white-space: pre-wrap; }}
.{PANEL_CLASS} .token {{ border-radius: 2px; }}
"""


def ranked_neurons(run_dir: str | Path, site: str, layer: int) -> list[dict]:
    """The scored neurons of `site`'s layer `layer` that fire, best explained first
    (`page.ranked_by_score`, the study page's order).

    Each is its score line (`neuron`, `explanation`, `scores`, ...) plus `max_activation`, the
    neuron's largest activation on the evaluation text (None without statistics).
    """
    layout = RunLayout(run_dir)
    entries = score_lines(layout.scores(site, layer))
    stats = neuron_statistics(layout.workdir, site, layer)
    return [{**entry, "max_activation": stats[entry["neuron"]]["max"] if stats else None}
            for entry in ranked_by_score(entries, stats)]


def neuron_panels_html(run_dir: str | Path, site: str, layer: int,
                       chosen: Sequence[tuple[str, int]]) -> str:
    """One `<div class="crate-neuron-panel">` with a panel per `(title, neuron index)` of
    `chosen`, under a line giving the layer's mean top-and-random score [95% interval] and the
    random-explanation baseline from the run's `interp/summary.json`, to judge each score by."""
    layout = RunLayout(run_dir)
    config = json.loads(layout.config.read_text())
    record_protocol = config.get("interp", {}).get("protocol", "default")
    entries = {entry["neuron"]: entry for entry in score_lines(layout.scores(site, layer))}
    records = {record.neuron_id.neuron_index: record
               for record in read_records(layout.records(site, layer))}
    stats = neuron_statistics(layout.workdir, site, layer)
    panels = []
    for title, index in chosen:
        neuron = records[index]
        scale = max_activation(explanation_records(neuron, "openai", record_protocol))
        panels.append(neuron_html(title, config["variant"], site, layer, neuron, entries[index],
                                   stats.get(index), scale))
    return (f'<div class="{PANEL_CLASS}"><style>{_STYLE}</style>'
            f"<p>{html.escape(_layer_context(layout, site, layer))}</p>{''.join(panels)}</div>")


def _layer_context(layout: RunLayout, site: str, layer: int) -> str:
    """What a single neuron's score is to be read against: its layer's mean and chance."""
    if not layout.summary.exists():
        return f"{site} layer {layer}: no interp/summary.json to compare with"
    entry = json.loads(layout.summary.read_text())["sites"][site][str(layer)]
    baseline = entry["baseline"].get("top_and_random")
    chance = ("" if baseline is None else
              f"; scored with another neuron's explanation (chance): {interval_text(baseline)}")
    return (f"{site} layer {layer}: mean top-and-random score of its {entry['neurons']} scored "
            f"neurons {interval_text(entry['splits']['top_and_random'])} [95% interval]{chance}")
