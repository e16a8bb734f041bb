"""Where each variant's loss sits above the planted corpus's entropy floor, by feature.

On the planted corpus "converged" has a number: the generator's own loss. This table says how
far each variant is from it and which planted features hold the rest (an unlearned copy
pattern, say), from the runs' `interp/ground_truth.json` (`loss_above_floor`, on the targets
where the floor is within a model's reach), averaged over seeds. Natural-text runs have no
floor, and no such table.
"""

from __future__ import annotations

from crate_jax.report.text import section_markdown

LARGEST = 3  # features listed per variant


def floor_gap(truths: list[dict | None]) -> dict | None:
    """`{"model_loss", "floor", "excess", "by_feature": {name: excess share}}`, seed means."""
    gaps = [t["loss_above_floor"] for t in truths if t and "loss_above_floor" in t]
    if not gaps:
        return None
    mean = {key: sum(g[key] for g in gaps) / len(gaps) for key in ("model_loss", "floor", "excess")}
    names = dict.fromkeys(name for g in gaps for name in g["by_feature"])
    mean["by_feature"] = {name: sum(g["by_feature"].get(name, {}).get("excess_share", 0.0)
                                    for g in gaps) / len(gaps) for name in names}
    mean["seeds"] = len(gaps)
    return mean


def floor_gap_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The table's header and cells (no rows when no variant has a floor): for `ablation.md`,
    the page and the README alike."""
    body = []
    for row in rows:
        gap = row.get("floor_gap")
        if not gap:
            continue
        largest = sorted(gap["by_feature"].items(), key=lambda item: -item[1])[:LARGEST]
        body.append([row["variant"], f"{gap['model_loss']:.3f}", f"{gap['floor']:.3f}",
                     f"{gap['excess']:.3f}",
                     ", ".join(f"`{name}` {share:.3f}" for name, share in largest)])
    header = ["variant", "loss", "entropy floor", "above floor",
              f"largest shares of it ({LARGEST}; features overlap)"]
    return header, body


EXPLANATION = ("Nats/token on the interpretability text's targets whose document starts inside "
               "their sequence, where a model that sees the sequence can reach the floor exactly "
               "(mean over seeds); a feature's share is its tokens' excess over the floor divided "
               "by all those tokens, so the shares show what the models have not learned yet.")


def floor_gap_markdown(rows: list[dict]) -> str:
    """A section for `ablation.md`; empty when no variant has a floor."""
    return section_markdown("Loss above the entropy floor", EXPLANATION, floor_gap_cells(rows))
