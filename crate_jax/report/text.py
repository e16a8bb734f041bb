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
