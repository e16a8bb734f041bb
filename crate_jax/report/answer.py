"""The study's answer: the like-for-like comparisons behind ablations A and B, a sentence each.

Ablation A removes ISTA (`no_ista`), ablation B replaces MSSA by standard attention
(`standard_attention`); a variant that is CRATE's own config under another name and other seeds
(`study.variants` such as `crate,crate_copy=crate`) is an A/A check, compared the same way: it
should show no change. Each is compared with CRATE on every site both have, by the difference in
mean score (top-and-random and random-only, and ground-truth recovery on a planted corpus) and,
where the study has untrained controls, by the difference in the paired gain over them (so a
change a random network already shows is not credited to training). Every difference is over
training runs (Welch's t, `statistics.run_difference`); the family of all differences the answer
states is controlled by Holm's procedure at family-wise error `statistics.FAMILY_ERROR`, and a
sentence names only the changes whose Holm-adjusted p is below it, each with that p. Where the
study fits SAEs as wide and as sparse as a site of CRATE's (`study.sae_k_from`,
`ablation_table.sae_counterparts`), the family also holds that comparison: the SAE's latents
(e.g. `sae_mlp` of gpt2, fitted afterwards) against CRATE's own sparse code (`ista`). A
comparison that involves an undertrained run (one whose validation loss does not beat the bigram
reference) draws no conclusion: its sentence says so instead, and it is left out of the family.
"""

from __future__ import annotations

import math

from crate_jax.model import NEURON_SITES
from crate_jax.report.text import interval_text, markdown_rows
from crate_jax.statistics import FAMILY_ERROR, detectable_difference, holm_adjusted

REFERENCE_VARIANT = "crate"
ABLATIONS = (("A", "no_ista"), ("B", "standard_attention"))
COPY_LABEL = "A/A"  # CRATE's own config under another name: a check of the procedure
SAE_LABEL = "SAE"  # an SAE fitted afterwards against CRATE's site of the same width and L0
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


def compared_variants(rows: list[dict]) -> list[tuple[str, str]]:
    """`[(label, variant)]` the answer compares with CRATE: ablations A and B where the study
    has them, then every copy of CRATE's config (an A/A check)."""
    present = {row["variant"] for row in rows}
    copies = [(COPY_LABEL, row["variant"]) for row in rows
              if row["variant"] != REFERENCE_VARIANT
              and row.get("config", row["variant"]) == REFERENCE_VARIANT]
    return [(label, v) for label, v in ABLATIONS if v in present] + copies


def undertrained_runs(rows: list[dict], variant: str) -> list[str]:
    """The undertrained runs of CRATE and of `variant`: any makes their comparison moot."""
    by_variant = {row["variant"]: row for row in rows}
    return (by_variant[REFERENCE_VARIANT].get("undertrained_runs", [])
            + by_variant[variant].get("undertrained_runs", []))


def answer_rows(rows: list[dict]) -> list[dict]:
    """`[{"ablation", "variant", "site", "crate_site", <each of COMPARED>}]`: the differences
    from CRATE (`None` where the study has no such number) of each shared site, and of each SAE
    against its counterpart site of CRATE's (`crate_site`), each with `p_holm`, its
    Holm-adjusted p over the family of every finite p value here, and `detectable`, the
    smallest difference its test would detect with 80% power in that family (comparisons with an
    undertrained run are not in the family: they conclude nothing). The `_gain` keys compare
    the paired gains over the untrained controls (the variant's minus CRATE's)."""
    by_variant = {row["variant"]: row for row in rows}
    crate = by_variant.get(REFERENCE_VARIANT)
    if crate is None:
        return []
    comparisons = []
    pairs = [(label, variant, site, site) for label, variant in compared_variants(rows)
             for site in NEURON_SITES if f"{site}/top_and_random" in by_variant[variant]
             and f"{site}/top_and_random" in crate]
    pairs += [(SAE_LABEL, row["variant"], key.split("/")[0], value) for row in rows
              for key, value in row.items() if key.endswith("/vs_crate_site")]
    for label, variant, site, crate_site in pairs:
        differences = {key: by_variant[variant].get(_row_key(site, key)) for key in COMPARED}
        comparisons.append({"ablation": label, "variant": variant, "site": site,
                            "crate_site": crate_site,
                            **{key: dict(d) if d else None for key, d in differences.items()}})
    family = [(c, key) for c in comparisons for key in COMPARED
              if c[key] and not undertrained_runs(rows, c["variant"])
              and math.isfinite(c[key].get("p_value", math.nan))]
    for (comparison, key), adjusted in zip(
            family, holm_adjusted([c[key]["p_value"] for c, key in family]), strict=True):
        comparison[key]["p_holm"] = adjusted
        comparison[key]["detectable"] = detectable_difference(comparison[key], len(family))
    return comparisons


def _detected(difference: dict | None) -> bool:
    """Holm-adjusted p below the family-wise error: a detected change."""
    return bool(difference) and difference.get("p_holm", math.nan) < FAMILY_ERROR


def _change_text(site: str, key: str, difference: dict) -> str:
    low, high = sorted((abs(difference["ci_low"]), abs(difference["ci_high"])))
    verb = "raises" if difference["difference"] > 0 else "lowers"
    return f"{verb} {site} {_NAMES[key]} by {abs(difference['difference']):.2f} " \
           f"[{low:.2f}, {high:.2f}] (Holm p {_p_text(difference['p_holm'])})"


def _p_text(p: float) -> str:
    """`= 0.012` or `< 0.001`."""
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def answer_sentences(rows: list[dict]) -> list[str]:
    """One sentence per compared variant the study holds, derived from the tests alone."""
    by_variant = {row["variant"]: row for row in rows}
    crate = by_variant.get(REFERENCE_VARIANT)
    if crate is None:
        return ["No CRATE run in this study: there is nothing to compare the ablations with."]
    comparisons = answer_rows(rows)
    family = sum(1 for c in comparisons for key in COMPARED if c[key] and "p_holm" in c[key])
    sentences = []
    for label, variant, ours in _subjects(comparisons, rows):
        row = by_variant[variant]
        opening = _opening(label, variant, ours)
        undertrained = undertrained_runs(rows, variant)
        if undertrained:
            verb = "does" if len(undertrained) == 1 else "do"
            sentences.append(f"{opening} no conclusion, {', '.join(undertrained)} {verb} not "
                             "beat the bigram reference loss (undertrained).")
            continue
        sentence = f"{opening} {_changes(ours, RAW) or 'no site in common with CRATE'}."
        gains = _changes(ours, GAINS)
        if gains:
            sentence += f" Over the untrained controls (paired gains): {gains}."
        sentence += (f" (Holm over the answer's {family} comparisons, family-wise error "
                     f"{FAMILY_ERROR:.0%}{_resolution(ours)}.)")
        if crate.get("undertrained") is None or row.get("undertrained") is None:
            sentence += (" (Some runs have no reference losses, so whether they beat a bigram "
                         "model is unchecked.)")
        sentences.append(sentence)
    return sentences


def _subjects(comparisons: list[dict], rows: list[dict]) -> list[tuple[str, str, list]]:
    """`[(label, variant, its comparisons)]`, one per sentence: each ablation and copy with all
    its sites, then each SAE compared with CRATE's counterpart on its own."""
    subjects = [(label, variant, [c for c in comparisons if c["variant"] == variant
                                  and c["ablation"] == label])
                for label, variant in compared_variants(rows)]
    return subjects + [(SAE_LABEL, c["variant"], [c]) for c in comparisons
                       if c["ablation"] == SAE_LABEL]


def _opening(label: str, variant: str, comparisons: list[dict]) -> str:
    if label == SAE_LABEL:
        c = comparisons[0]
        return (f"SAE vs CRATE's own sparse code ({variant}'s {c['site']}, fitted afterwards, "
                f"vs crate's {c['crate_site']}, at equal width and L0):")
    name = "A/A check" if label == COPY_LABEL else f"Ablation {label}"
    return f"{name} ({variant} vs crate):"


def _resolution(comparisons: list[dict]) -> str:
    """`; with 5 runs a side, differences of 0.06 to 0.21 or more are detected with 80% power`:
    what "no detectable change" can mean for these comparisons."""
    judged = [c[key] for c in comparisons for key in COMPARED
              if c[key] and math.isfinite(c[key].get("detectable", math.nan))]
    if not judged:
        return ""
    sizes = [d["detectable"] for d in judged]
    runs = sorted({d[side] for d in judged for side in ("n", "n_reference")})
    return (f"; with {'-'.join(map(str, (runs[0], runs[-1]) if len(runs) > 1 else runs))} "
            f"runs a side, differences of {min(sizes):.2f} to {max(sizes):.2f} or more "
            "are detected with 80% power")


def _changes(comparisons: list[dict], keys: tuple[str, ...]) -> str:
    """The detected changes among `keys` of one variant's comparisons, or that there are none;
    empty where none of `keys` was compared."""
    tested = [(c["site"], key, c[key]) for c in comparisons for key in keys if c[key]]
    changes = [_change_text(site, key, d) for site, key, d in tested if _detected(d)]
    if not tested:
        return ""
    if not changes:
        return "no detectable change on any shared site"
    if len(changes) < len(tested):
        return "; ".join(changes) + "; no detectable change elsewhere"
    return "; ".join(changes)


def _difference_text(difference: dict | None) -> str:
    text = interval_text(difference, "difference")
    if difference and math.isfinite(difference.get("p_holm", math.nan)):
        text += f", p {_p_text(difference['p_holm'])}"
    return text


def answer_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The answer table's header and cells, shared by `ablation.md`, the page and the README."""
    comparisons = answer_rows(rows)
    keys = [key for key in COMPARED
            if key in ("top_and_random", "random_only") or any(c[key] for c in comparisons)]
    undertrained = {row["variant"] for row in rows if row.get("undertrained")}
    header = ["comparison", "site"] + [f"{_NAMES[key]} vs CRATE" for key in keys]
    body = []
    for c in comparisons:
        label = f"{c['ablation']}: {c['variant']} − crate"
        if undertrained & {c["variant"], REFERENCE_VARIANT}:
            label += " (undertrained)"
        site = c["site"] if c["crate_site"] == c["site"] else f"{c['site']} vs {c['crate_site']}"
        body.append([label, site] + [_difference_text(c[key]) for key in keys])
    return header, body


def answer_markdown(rows: list[dict]) -> str:
    """`## Answer`: the short table of differences, then one sentence per compared variant."""
    header, body = answer_cells(rows)
    table = markdown_rows(header, body) + "\n" if body else ""
    gains = any(f"{_NAMES[key]} vs CRATE" in header for key in GAINS)  # columns shown
    return ("## Answer\n\nDifference from CRATE on each site both have, over training runs: "
            "mean [95% Welch t interval over runs], p = Holm-adjusted p over every comparison "
            f"in this table; a change is detected where p < {FAMILY_ERROR:g}."
            + (" A gain is paired: per run, the mean over neurons of the trained score minus "
               "the same neuron's untrained score; its column is the variant's gains minus "
               "CRATE's." if gains else "") + "\n\n" + table
            + "\n\n".join(answer_sentences(rows)) + "\n")


def answer_json(rows: list[dict]) -> dict:
    return {"comparisons": answer_rows(rows), "sentences": answer_sentences(rows)}
