"""How the report writes numbers and flags: the same in `ablation.md`, the page and the README.

Table cells are plain text, or a `Flagged` cell whose warning word each format emphasises its
own way (`**…**` in Markdown, `<strong>` on the page), so no renderer parses another's markup.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Flagged:
    """A cell that opens with a warning word shown in bold, then plain text."""

    flag: str
    rest: str = ""


Cell = str | Flagged


def interval_text(stats: dict | None, key: str = "mean") -> str:
    if not stats or stats.get(key) is None or math.isnan(stats[key]):
        return "—"
    if math.isnan(stats["ci_low"]):
        return f"{stats[key]:.3f}"
    return f"{stats[key]:.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"


def seeds_text(study: dict) -> str:
    """`seeds 0-4` or, where variants have seeds of their own, each variant's: from a study's
    `study.json`, for the README and the page."""
    per_variant = study.get("variant_seeds") or {}
    spans = {name: _span(seeds) for name, seeds in per_variant.items()}
    if len(set(spans.values())) <= 1:
        return f"seeds {next(iter(spans.values()), study.get('seeds', '?'))}"
    return "seeds " + ", ".join(f"{span} for {name}" for name, span in spans.items())


def _span(seeds: list[int]) -> str:
    ordered = sorted(seeds)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(map(str, ordered))


def reference_text(row: dict, key: str) -> str:
    value = (row.get("references") or {}).get(key)
    return "n/a" if value is None else f"{value:.3f}"


def training_text(row: dict) -> Cell:
    """`undertrained (runs)` flagged, `beats bigram` or `n/a` (no reference losses)."""
    if row.get("undertrained") is None:
        return "n/a"
    if row["undertrained"]:
        return Flagged("undertrained", f" ({', '.join(row['undertrained_runs'])})")
    return "beats bigram"


def markdown_cell(cell: Cell) -> str:
    return cell if isinstance(cell, str) else f"**{cell.flag}**{cell.rest}"


def markdown_rows(header: list[str], body: list[list[Cell]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(markdown_cell(cell) for cell in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def section_markdown(title: str, explanation: str,
                     cells: tuple[list[str], list[list[Cell]]]) -> str:
    """`## title`, the explanation and the table; empty where the table has no rows."""
    header, body = cells
    if not body:
        return ""
    return f"## {title}\n\n{explanation}\n\n" + markdown_rows(header, body)
