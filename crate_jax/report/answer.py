"""The study's answer: the like-for-like comparisons behind ablations A and B, a sentence each.

Ablation A removes ISTA (`no_ista`), ablation B replaces MSSA by standard attention
(`standard_attention`); each is compared with CRATE on every site both have, by the difference
in mean score (top-and-random and random-only, and ground-truth recovery on a planted corpus)
with its 95% bootstrap interval, and, where the study has untrained controls, by the difference
in the gain over them (so a change a random network already shows is not credited to training).
A sentence names the differences whose interval excludes 0. A comparison that involves an
undertrained run (one whose validation loss does not beat the bigram reference) draws no
conclusion: its sentence says so instead.
"""

from __future__ import annotations

import math

from crate_jax.model import NEURON_SITES
from crate_jax.report.text import interval_text, markdown_rows

REFERENCE_VARIANT = "crate"
ABLATIONS = (("A", "no_ista"), ("B", "standard_attention"))
RAW = ("top_and_random", "random_only", "recovery")
GAINS = ("top_and_random_gain", "random_only_gain")  # over each variant's untrained control
COMPARED = RAW + GAINS
_NAMES = {"top_and_random": "top-and-random", "random_only": "random-only",
          "recovery": "recovery", "top_and_random_gain": "top-and-random gain",
          "random_only_gain": "random-only gain"}


def _row_key(site: str, key: str) -> str:
    """Where `controls`/`ablation_table` put a comparison with CRATE in a variant's row."""
    if key in GAINS:
        return f"{site}/{key.removesuffix('_gain')}/gain_vs_crate"
    return f"{site}/{key}/vs_crate"


def answer_rows(rows: list[dict]) -> list[dict]:
    """`[{"ablation", "variant", "site", <each of COMPARED>}]`: the differences from CRATE
    (`None` where the study has no such number) of each shared site; the `_gain` keys compare
    the gains over the untrained controls (the variant's minus CRATE's)."""
    by_variant = {row["variant"]: row for row in rows}
    crate = by_variant.get(REFERENCE_VARIANT)
    if crate is None:
        return []
    comparisons = []
    for label, variant in ABLATIONS:
        row = by_variant.get(variant)
        if row is None:
            continue
        for site in NEURON_SITES:
            if f"{site}/top_and_random" in row and f"{site}/top_and_random" in crate:
                comparisons.append({"ablation": label, "variant": variant, "site": site,
                                    **{key: row.get(_row_key(site, key))
                                       for key in COMPARED}})
    return comparisons


def _detected(difference: dict | None) -> bool:
    """The interval excludes 0. A zero-width interval (one seed of a per-run number such as
    recovery: nothing to resample) detects nothing."""
    return bool(difference) and math.isfinite(difference["ci_low"]) and \
        math.isfinite(difference["ci_high"]) and difference["ci_low"] < difference["ci_high"] \
        and (difference["ci_low"] > 0 or difference["ci_high"] < 0)


def _change_text(site: str, key: str, difference: dict) -> str:
    low, high = sorted((abs(difference["ci_low"]), abs(difference["ci_high"])))
    verb = "raises" if difference["difference"] > 0 else "lowers"
    return f"{verb} {site} {_NAMES[key]} by {abs(difference['difference']):.2f} " \
           f"[{low:.2f}, {high:.2f}]"


def answer_sentences(rows: list[dict]) -> list[str]:
    """One sentence per ablation the study holds, derived from the intervals alone."""
    by_variant = {row["variant"]: row for row in rows}
    crate = by_variant.get(REFERENCE_VARIANT)
    if crate is None:
        return ["No CRATE run in this study: there is nothing to compare the ablations with."]
    comparisons = answer_rows(rows)
    sentences = []
    for label, variant in ABLATIONS:
        row = by_variant.get(variant)
        if row is None:
            continue
        opening = f"Ablation {label} ({variant} vs crate):"
        undertrained = crate.get("undertrained_runs", []) + row.get("undertrained_runs", [])
        if undertrained:
            verb = "does" if len(undertrained) == 1 else "do"
            sentences.append(f"{opening} no conclusion, {', '.join(undertrained)} {verb} not "
                             "beat the bigram reference loss (undertrained).")
            continue
        ours = [c for c in comparisons if c["variant"] == variant]
        sentence = f"{opening} {_changes(ours, RAW) or 'no site in common with CRATE'}."
        gains = _changes(ours, GAINS)
        if gains:
            sentence += f" Over the untrained controls: {gains}."
        if crate.get("undertrained") is None or row.get("undertrained") is None:
            sentence += (" (Some runs have no reference losses, so whether they beat a bigram "
                         "model is unchecked.)")
        sentences.append(sentence)
    return sentences


def _changes(comparisons: list[dict], keys: tuple[str, ...]) -> str:
    """The detected changes among `keys` of one ablation's comparisons, or that there are none;
    empty where none of `keys` was compared."""
    tested = [(c["site"], key, c[key]) for c in comparisons for key in keys if c[key]]
    changes = [_change_text(site, key, d) for site, key, d in tested if _detected(d)]
    if not tested:
        return ""
    if not changes:
        return "no detectable change on any shared site (every interval includes 0)"
    if len(changes) < len(tested):
        return "; ".join(changes) + "; no detectable change elsewhere"
    return "; ".join(changes)


def answer_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The answer table's header and cells, shared by `ablation.md`, the page and the README."""
    comparisons = answer_rows(rows)
    keys = [key for key in COMPARED
            if key in ("top_and_random", "random_only") or any(c[key] for c in comparisons)]
    undertrained = {row["variant"] for row in rows if row.get("undertrained")}
    header = ["ablation", "site"] + [f"{_NAMES[key]} vs CRATE" for key in keys]
    body = []
    for c in comparisons:
        label = f"{c['ablation']}: {c['variant']} − crate"
        if undertrained & {c["variant"], REFERENCE_VARIANT}:
            label += " (undertrained)"
        body.append([label, c["site"]] + [interval_text(c[key], "difference") for key in keys])
    return header, body


def answer_markdown(rows: list[dict]) -> str:
    """`## Answer`: the short table of differences, then one sentence per ablation."""
    header, body = answer_cells(rows)
    table = markdown_rows(header, body) + "\n" if body else ""
    gains = any(c[key] for c in answer_rows(rows) for key in GAINS)
    return ("## Answer\n\nDifference from CRATE on each site both have: mean [95% interval]; "
            "an interval that excludes 0 is a detected change."
            + (" A gain is a variant's trained score minus its untrained control's; its column "
               "is the ablated variant's gain minus CRATE's." if gains else "") + "\n\n" + table
            + "\n\n".join(answer_sentences(rows)) + "\n")


def answer_json(rows: list[dict]) -> dict:
    return {"comparisons": answer_rows(rows), "sentences": answer_sentences(rows)}
