"""How the report writes numbers and flags: the same in `ablation.md`, the page and the README."""

from __future__ import annotations

import math


def interval_text(stats: dict | None, key: str = "mean") -> str:
    if not stats or stats.get(key) is None or math.isnan(stats[key]):
        return "—"
    if math.isnan(stats["ci_low"]):
        return f"{stats[key]:.3f}"
    return f"{stats[key]:.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"


def reference_text(row: dict, key: str) -> str:
    value = (row.get("references") or {}).get(key)
    return "n/a" if value is None else f"{value:.3f}"


def training_text(row: dict) -> str:
    """`**undertrained** (runs)`, `beats bigram` or `n/a` (no reference losses)."""
    if row.get("undertrained") is None:
        return "n/a"
    if row["undertrained"]:
        return f"**undertrained** ({', '.join(row['undertrained_runs'])})"
    return "beats bigram"


def markdown_rows(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


