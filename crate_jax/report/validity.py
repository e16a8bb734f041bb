"""Which measure tracks the truth: every explainer x score checked against the planted truth,
and the ablations' answer on each measure.

On the planted corpus each neuron's selectivity for its best planted feature is known
(`interp.ground_truth`: 0 for chance, 1 for a perfect detector of one feature). Each run's
`ground_truth.json` holds, per explainer (the headline `interp.explainer` and every
`interp.compared_explainers`), site and score, the Spearman correlation across the site's
neurons between the score and selectivity, and between the score and the best feature's AUROC.
Here each correlation is a mean over runs with its t interval over runs, beside the same for
the untrained controls. A measure (explainer x score) tracks the truth in a (variant, site)
pair when its mean correlation with selectivity is at least `GOAL_CORRELATION`; the measure
that does so in the most pairs (then: with the highest mean correlation) is the one the answer
is stated on first. The `truth` control is a ceiling, not a candidate: it names the right
feature by construction.

The answer on a measure compares ablations A and B (and any A/A copy) with CRATE on each shared
site, by Welch's t over runs of the per-run mean score (`statistics.run_difference`). Holm's
procedure runs over every comparison of every real measure together: the table shows them side
by side, and a reader who picks the measure that shows a change must not get a 5% error per
measure. The best-tracking measure is chosen by its correlation with the truth, never by its
differences, and its sentence quotes the same family's p values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from crate_jax.interp.ground_truth import VALIDITY_MEASURES
from crate_jax.layout import RunLayout
from crate_jax.model import NEURON_SITES
from crate_jax.report import run_files
from crate_jax.report.answer import REFERENCE_VARIANT, compared_variants, undertrained_runs
from crate_jax.report.controls import neuron_scores, run_means
from crate_jax.report.text import markdown_rows
from crate_jax.statistics import FAMILY_ERROR, holm_adjusted, run_difference, run_interval

VALIDITY_SCORES = ("top_and_random", "random_only", "detection", "detection_auroc", "fuzzing")
GOAL_CORRELATION = 0.5
GOAL_SHARE = 12 / 14  # of the (variant, site) pairs: 12 of the 14 model sites of the default study
CONTROL_EXPLAINER = "truth"
SCORE_NAMES = {"top_and_random": "top-and-random", "random_only": "random-only",
               "detection": "detection", "detection_auroc": "detection AUROC",
               "fuzzing": "fuzzing"}


def measure_name(explainer: str, score: str) -> str:
    return f"{explainer} {SCORE_NAMES[score]}"


def _explainer_folders(run_dir: Path) -> dict[str, str | None]:
    """`{explainer: its scores folder argument}`: None for the headline explainer."""
    summary = json.loads(RunLayout(run_dir).summary.read_text())
    return {summary["explainer"]: None,
            **{kind: kind for kind in summary.get("compared_explainers", {})}}


def validity_entries(runs: dict[str, list[tuple[str, Path]]],
                     controls: dict[str, list[tuple[str, Path]]]) -> list[dict]:
    """One entry per (explainer, score, measure, variant, site) that every run of the variant
    checked: `trained` and `untrained` (`run_interval` of the per-run correlations) and
    `neurons` (summed over runs). `runs`, `controls`: `{variant: [(run name, dir)]}`."""
    entries = []
    for variant, variant_runs in runs.items():
        truths = [run_files.ground_truth(d) for _, d in variant_runs]
        if not truths or any(t is None or "validity" not in t for t in truths):
            continue
        control_dirs = dict(controls.get(variant, []))
        control_truths = [t for name, _ in variant_runs if name in control_dirs
                          if (t := run_files.ground_truth(control_dirs[name])) is not None
                          and "validity" in t]
        for explainer, sites in truths[0]["validity"].items():
            for site, scores in sites.items():
                for score in VALIDITY_SCORES:
                    if score not in scores:
                        continue
                    for measure in VALIDITY_MEASURES:
                        where = (explainer, site, score, measure)
                        trained = _correlations(truths, *where)
                        untrained = _correlations(control_truths, *where)
                        entries.append({
                            "explainer": explainer, "score": score, "measure": measure,
                            "variant": variant, "site": site,
                            "trained": run_interval([c["spearman"] for c in trained]),
                            "untrained": (run_interval([c["spearman"] for c in untrained])
                                          if untrained else None),
                            "neurons": sum(c["n"] for c in trained)})
    return entries


def _correlations(truths: list[dict], explainer: str, site: str, score: str,
                  measure: str) -> list[dict]:
    """`{"spearman", "n"}` of each run (`ground_truth.json`) that checked this score."""
    return [t["validity"][explainer][site][score][measure] for t in truths
            if score in t["validity"].get(explainer, {}).get(site, {})]


def measure_summaries(entries: list[dict]) -> list[dict]:
    """Per measure (explainer x score), against selectivity: in how many (variant, site) pairs
    its mean correlation reaches `GOAL_CORRELATION` (`at_goal` of `pairs`), the mean of those
    correlations, the lowest, and the same mean for the untrained controls and against the best
    feature's AUROC. In the entries' order."""
    summaries = {}
    for entry in entries:
        key = (entry["explainer"], entry["score"])
        summary = summaries.setdefault(key, {"explainer": key[0], "score": key[1],
                                             "selectivity": [], "untrained": [],
                                             "best_auroc": []})
        mean = entry["trained"]["mean"]
        if entry["measure"] == "selectivity":
            summary["selectivity"].append(mean)
            if entry["untrained"] is not None:
                summary["untrained"].append(entry["untrained"]["mean"])
        else:
            summary["best_auroc"].append(mean)
    result = []
    for summary in summaries.values():
        finite = [m for m in summary["selectivity"] if math.isfinite(m)]
        result.append({"explainer": summary["explainer"], "score": summary["score"],
                       "pairs": len(summary["selectivity"]),
                       "at_goal": sum(m >= GOAL_CORRELATION for m in finite),
                       "mean": _mean(finite), "lowest": min(finite, default=math.nan),
                       "untrained_mean": _mean(summary["untrained"]),
                       "auroc_mean": _mean(summary["best_auroc"])})
    return result


def best_measure(summaries: list[dict]) -> dict | None:
    """The real measure (not the `truth` control) that tracks the truth in the most pairs, then
    with the highest mean correlation; None without any."""
    candidates = [s for s in summaries if s["explainer"] != CONTROL_EXPLAINER
                  and math.isfinite(s["mean"])]
    return max(candidates, key=lambda s: (s["at_goal"], s["mean"]), default=None)


def measure_comparisons(rows: list[dict], runs: dict[str, list[tuple[str, Path]]],
                        summaries: list[dict]) -> list[dict]:
    """Per real measure, the answer's comparisons on it: `{"explainer", "score", "comparisons":
    [{"label", "variant", "site", **run_difference, "p_holm"}]}` (Holm over every measure's
    comparisons; those with an undertrained run are listed without `p_holm`: they conclude
    nothing).
    `rows`: the ablation table's rows (which variants are compared, which are undertrained)."""
    if REFERENCE_VARIANT not in runs:
        return []
    folders = {variant: [_explainer_folders(d) for _, d in variant_runs]
               for variant, variant_runs in runs.items()}
    cache: dict = {}

    def per_run_means(variant: str, explainer: str, score: str, site: str) -> list[float]:
        means = []
        for (_, run_dir), explainers in zip(runs[variant], folders[variant], strict=True):
            if explainer not in explainers:
                continue
            key = (run_dir, explainer, score)
            if key not in cache:
                cache[key] = neuron_scores(run_dir, (score,), explainers[explainer])
            means += run_means([cache[key]], site, score)
        return means

    result = []
    for summary in summaries:
        if summary["explainer"] == CONTROL_EXPLAINER:
            continue
        explainer, score = summary["explainer"], summary["score"]
        comparisons = []
        for label, variant in compared_variants(rows):
            for site in NEURON_SITES:
                ours = per_run_means(variant, explainer, score, site)
                theirs = per_run_means(REFERENCE_VARIANT, explainer, score, site)
                if ours and theirs:
                    comparisons.append({"label": label, "variant": variant, "site": site,
                                        **run_difference(ours, theirs)})
        result.append({"explainer": explainer, "score": score, "comparisons": comparisons})
    judged = [c for answer in result for c in answer["comparisons"]
              if not undertrained_runs(rows, c["variant"])]
    for comparison, adjusted in zip(judged, holm_adjusted([c["p_value"] for c in judged]),
                                    strict=True):
        comparison["p_holm"] = adjusted
    return result


def validity_report(rows: list[dict], runs: dict[str, list[tuple[str, Path]]],
                    controls: dict[str, list[tuple[str, Path]]]) -> dict | None:
    """`{"entries", "summaries", "best", "answers"}` for `ablation.json`; None for a study
    without ground truth (natural text) or whose runs checked no explainer against it."""
    entries = validity_entries(runs, controls)
    if not entries:
        return None
    summaries = measure_summaries(entries)
    return {"goal_correlation": GOAL_CORRELATION, "entries": entries, "summaries": summaries,
            "best": best_measure(summaries),
            "answers": measure_comparisons(rows, runs, summaries)}


VALIDITY_EXPLANATION = (
    "Each cell: the Spearman correlation, across a site's neurons (layers pooled), between a "
    "measure (explainer x score) and the neuron's selectivity for its best planted feature (0: "
    "chance, 1: a perfect single-feature detector), mean over runs; `truth` is the control "
    "that names the right feature by construction. Intervals over runs, and the untrained "
    "controls' per pair, are in ablation.json.")


def validity_cells(report: dict | None) -> tuple[list[str], list[list[str]]]:
    """The validity table's header and cells (one row per measure, one column per (variant,
    site) pair), shared by `ablation.md`, the page and the README; empty without a report."""
    if not report:
        return [], []
    pairs = list(dict.fromkeys((e["variant"], e["site"]) for e in report["entries"]))
    selectivity = {(e["explainer"], e["score"], e["variant"], e["site"]): e
                   for e in report["entries"] if e["measure"] == "selectivity"}
    header = (["measure"] + [f"{variant} {site}" for variant, site in pairs]
              + [f"ρ ≥ {GOAL_CORRELATION:g}", "mean ρ", "untrained mean ρ",
                 "mean ρ with best AUROC"])
    body = []
    for summary in report["summaries"]:
        key = (summary["explainer"], summary["score"])
        cells = [measure_name(*key)]
        cells += [_rho_text(selectivity.get((*key, *pair))) for pair in pairs]
        cells += [f"{summary['at_goal']}/{summary['pairs']}", _number(summary["mean"]),
                  _number(summary["untrained_mean"]), _number(summary["auroc_mean"])]
        body.append(cells)
    return header, body


def best_measure_sentences(report: dict | None) -> list[str]:
    """The best-tracking measure with its reason, and the ablations' answer on it."""
    best = (report or {}).get("best")
    if best is None:
        return []
    goal = math.ceil(GOAL_SHARE * best["pairs"] - 1e-9)
    sentences = [
        f"Best-tracking measure: **{measure_name(best['explainer'], best['score'])}**, "
        f"correlation ≥ {GOAL_CORRELATION:g} in {best['at_goal']} of {best['pairs']} "
        "(variant, site) pairs, the most of any real measure (then: the highest mean), mean "
        f"{best['mean']:.2f}, lowest {best['lowest']:.2f}. The goal, {goal} of "
        f"{best['pairs']}, is {'met' if best['at_goal'] >= goal else 'not met'}."]
    answers = {(a["explainer"], a["score"]): a for a in report["answers"]}
    if (best["explainer"], best["score"]) in answers:
        sentences.append(f"On it: {_answer_text(answers[best['explainer'], best['score']])}")
    return sentences


def validity_markdown(report: dict | None, *, heading: bool = True) -> str:
    """The validity table, the best-tracking measure with its reason, and the ablations'
    answer on it and on every other measure; "" without a report."""
    if not report:
        return ""
    lines = ["## Which measure tracks the truth\n" if heading else "",
             VALIDITY_EXPLANATION + "\n", markdown_rows(*validity_cells(report))]
    lines += [sentence + "\n" for sentence in best_measure_sentences(report)]
    lines.append(_others_table(report["answers"]))
    return "\n".join(line for line in lines if line)


def _answer_text(answer: dict) -> str:
    """One clause per compared variant: its detected changes (Holm within the measure)."""
    parts = []
    for label in dict.fromkeys(c["label"] for c in answer["comparisons"]):
        ours = [c for c in answer["comparisons"] if c["label"] == label]
        name = "A/A check" if label == "A/A" else f"Ablation {label}"
        if not any("p_holm" in c for c in ours):
            parts.append(f"{name} ({ours[0]['variant']}): no conclusion (undertrained runs)")
            continue
        detected = [c for c in ours if c.get("p_holm", math.nan) < FAMILY_ERROR]
        changes = "; ".join(
            f"{'raises' if c['difference'] > 0 else 'lowers'} {c['site']} by "
            f"{abs(c['difference']):.2f} (Holm p {_p(c['p_holm'])})" for c in detected)
        parts.append(f"{name} ({ours[0]['variant']}) "
                     + (changes if detected else "changes no site detectably"))
    return ". ".join(parts) + "."


def _others_table(answers: list[dict]) -> str:
    """Every real measure's differences from CRATE, `*` where Holm (over the whole table)
    detects them."""
    columns = list(dict.fromkeys((c["label"], c["variant"], c["site"])
                                 for a in answers for c in a["comparisons"]))
    if not columns:
        return ""
    header = ["measure"] + [f"{label} {site}" for label, _, site in columns]
    body = []
    for answer in answers:
        by_column = {(c["label"], c["variant"], c["site"]): c for c in answer["comparisons"]}
        cells = [measure_name(answer["explainer"], answer["score"])]
        for column in columns:
            comparison = by_column.get(column)
            if comparison is None or not math.isfinite(comparison["difference"]):
                cells.append("—")
                continue
            star = "*" if comparison.get("p_holm", math.nan) < FAMILY_ERROR else ""
            cells.append(f"{comparison['difference']:+.3f}{star}")
        body.append(cells)
    family = sum("p_holm" in c for a in answers for c in a["comparisons"])
    return ("Each measure's difference from CRATE (variant − crate, mean over runs; `*`: Holm "
            f"p < {FAMILY_ERROR:g} over all {family} differences of this table):\n\n"
            + markdown_rows(header, body))


def _rho_text(entry: dict | None) -> str:
    return "—" if entry is None else _number(entry["trained"]["mean"], digits=2)


def _number(value: float, digits: int = 2) -> str:
    return "—" if not math.isfinite(value) else f"{value:.{digits}f}"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan

