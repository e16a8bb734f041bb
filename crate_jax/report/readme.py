"""Regenerate the README's study blocks from a study's artifacts, so its numbers are the code's.

    python -m crate_jax.report.readme --workdir=runs/ablation --readme=README.md
    python -m crate_jax.report.readme --workdir=runs/ablation_stdlib --as_block=stdlib

Replaces the text between `<!-- study:<block>:begin -->` and `<!-- study:<block>:end -->` for
each block, and nothing else:
- `facts`: the study's budget (variants, seeds, steps, batch, neurons scored, explainer,
  evaluation tokens), versions, the reference losses of its data, and the wall time and peak
  memory where `study.json` records them (`wall_seconds`, `peak_memory_bytes`);
- `answer`: the like-for-like comparisons of ablations A and B and one sentence each
  (`answer.answer_markdown`, without its heading);
- `controls`: each variant's and site's top-and-random score beside its controls (another
  neuron's explanation, the untrained model and the paired gain over it, the token reference;
  `controls.controls_markdown`, without its heading);
- `table`: one compact row per variant (parameters, validation loss and whether it beats the
  bigram reference, the sparse block's top-and-random score, `attn` and `resid` random-only
  scores, and ground-truth recovery where the corpus is planted);
- `floor`: how far each variant's loss is from a planted corpus's entropy floor, and which
  features hold the rest (`floor_gap`);
- `truth`: ground truth per variant and site (planted corpus), each beside the untrained
  controls': recovery over the site's layers, selectivity and the neurons too few firing to
  judge, and the explanation score's rank correlation with selectivity;
- `validity`: which measure (explainer x score) tracks the planted truth across neurons, the
  best-tracking one, and the ablations' answer on it and on the others (`validity`);
- `sae`: the study's SAEs beside the neurons they read and CRATE's site they are compared with
  (`sae_table`).
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

from absl import app, flags

from crate_jax.atomic_files import write_text_atomically
from crate_jax.layout import RunLayout, StudyLayout
from crate_jax.model import NEURON_SITES
from crate_jax.report.ablation_table import build_table, sites_of, study_controls, study_runs
from crate_jax.report.answer import answer_markdown, answer_sentences
from crate_jax.report.controls import controls_markdown
from crate_jax.report.floor_gap import floor_gap_cells
from crate_jax.report.sae_table import sae_markdown
from crate_jax.report.study_report import not_a_study
from crate_jax.report.text import (
    interval_text,
    markdown_rows,
    reference_text,
    seeds_text,
    training_text,
)
from crate_jax.report.validity import validity_markdown, validity_report

BLOCKS = ("facts", "answer", "controls", "table", "floor", "truth", "validity", "sae")


def _marker(block: str, end: str) -> str:
    return f"<!-- study:{block}:{end} -->"


def facts_text(workdir: Path, rows: list[dict]) -> str:
    """One paragraph: what the study ran, on what, and what its data's reference losses are."""
    study = json.loads(StudyLayout(workdir).manifest.read_text())
    runs = study_runs(workdir)
    first = RunLayout(next(iter(runs.values()))[0][1])
    config = json.loads(first.config.read_text())
    versions = json.loads(first.run_info.read_text()).get("versions", {})
    summary = json.loads(first.summary.read_text())
    train, interp = config["train"], config["interp"]
    seeds = max(len(r) for r in runs.values())
    text = (f"Study: {len(runs)} variants x {seeds} seed{'s' if seeds > 1 else ''} "
            f"({seeds_text(study)}); "
            f"{train['num_steps']} steps of {train['batch_size']} x {train['seq_len']} tokens "
            f"per run; {interp['neurons_per_layer']} neurons per site and layer scored with "
            f"`{summary['explainer']}`{_compared_text(summary)} on "
            f"{summary['evaluation_tokens']:,} held-out tokens"
            + ("; every run's untrained control (its step 0) scored the same way"
               if study.get("controls") else "") + _saes_text(study, config)
            + f"; JAX {versions.get('jax', '?')}, Python {versions.get('python', '?')}.")
    if "wall_seconds" in study:
        minutes, seconds = divmod(round(study["wall_seconds"]), 60)
        text += (f" Wall time {minutes} min {seconds} s"
                 + (" (of the last, resumed invocation)" if study.get("resumed") else ""))
        if "peak_memory_bytes" in study:
            text += f", peak memory {study['peak_memory_bytes'] / 1e9:.1f} GB"
            if study.get("workers", 1) > 1:
                text += f" per process ({study['workers']} runs at a time)"
        text += "."
    with_references = [row for row in rows if row.get("references")]
    if with_references:
        row = with_references[0]
        floor = reference_text(row, "floor")
        text += (f" Reference losses of the validation targets (nats/token): unigram "
                 f"{reference_text(row, 'unigram')}, bigram {reference_text(row, 'bigram')}"
                 + (f", entropy floor {floor}{_in_window_text(row)}" if floor != "n/a" else "")
                 + ".")
    else:
        text += " The runs have no reference losses (references.json), so training adequacy " \
                "is unchecked."
    return text + (" Every number is a mean over training runs [95% t interval over runs]: "
                   "the run, not the neuron, is the unit of replication.")


def _saes_text(study: dict, config: dict) -> str:
    """`; SAEs on gpt2's mlp (...)`: the study's SAEs, their budget and where k came from."""
    if not study.get("saes"):
        return ""
    sae = config["sae"]
    matched = study.get("sae_k")
    k = (f"k = {matched['k']}, the mean L0 of {matched['from']} ({matched['mean_l0']:.1f})"
         if matched else f"k = {sae['k']}")
    fitted = "; ".join(f"{variant}: {sites}" for variant, sites in study["saes"].items())
    return (f"; {sae['kind']} SAEs ({fitted}; {k}) fitted for {sae['num_steps']} steps of "
            f"{sae['batch_size']} x {sae['seq_len']} tokens of activations, on the trained "
            + ("and on the untrained model" if study.get("controls") else "model"))


def _compared_text(summary: dict) -> str:
    """` (and by ngram, truth)`: the compared explainers of a run, where it has any."""
    compared = list(summary.get("compared_explainers", {}))
    return f" (and by {', '.join(f'`{kind}`' for kind in compared)})" if compared else ""


def _in_window_text(row: dict) -> str:
    """The floor a window-only model can reach, from the first run's `references.json`."""
    first = row["runs"][0]["references"] or {}
    if first.get("floor_in_window") is None:
        return ""
    return (f" (conditioned on whole documents; {first['floor_in_window']:.3f} on the "
            f"{first['in_window_fraction']:.0%} of targets whose document starts in their window, "
            "the floor a model that sees the window can reach)")


def compact_table(rows: list[dict]) -> str:
    """The README's table: one row per variant, the numbers a reader compares first."""
    truth_sites = [site for site in NEURON_SITES  # SAE sites: the `sae` block
                   if any(f"{site}/recovery" in row for row in rows)]
    header = (["variant", "params", "val loss", "vs bigram", "sparse block: top-and-random",
               "attn: random-only", "resid: random-only"]
              + [f"{site}: recovery (any layer)" for site in truth_sites])
    body = []
    for row in rows:
        sparse = next((f"{site} {interval_text(row[f'{site}/top_and_random'])}"
                       for site in ("ista", "mlp") if f"{site}/top_and_random" in row), "—")
        body.append([row["variant"], f"{row['parameters'] / 1e6:.2f}M",
                     interval_text(row["validation_loss"]), training_text(row), sparse,
                     interval_text(row.get("attn/random_only")),
                     interval_text(row.get("resid/random_only"))]
                    + [interval_text(row.get(f"{site}/recovery")) for site in truth_sites])
    return markdown_rows(header, body)


def truth_table(rows: list[dict]) -> str:
    """Ground truth per variant and site (planted corpus), each beside the untrained controls':
    recovery over the site's layers, selectivity (0: chance, 1: a perfect detector of one
    feature) with the neurons too few firing to judge, and the rank correlation of the
    explanation score with selectivity across neurons."""
    body = []
    for row in rows:
        for site in sites_of(rows):
            if f"{site}/recovery" in row:
                too_few = row.get(f"{site}/too_few_firing")
                neurons = row.get(f"{site}/num_neurons")
                body.append([row["variant"], site, interval_text(row[f"{site}/recovery"]),
                             interval_text(row.get(f"{site}/recovery/untrained")),
                             interval_text(row.get(f"{site}/mean_selectivity")),
                             interval_text(row.get(f"{site}/mean_selectivity/untrained")),
                             "—" if too_few is None else (f"{too_few}/{neurons}" if neurons
                                                          else str(too_few)),
                             interval_text(row.get(f"{site}/spearman")),
                             interval_text(row.get(f"{site}/top_and_random"))])
    if not body:
        return "(no planted corpus: no ground truth)"
    header = ["variant", "site", "recovery (any layer)", "untrained", "selectivity",
              "untrained", "too few firing", "score vs truth ρ", "top-and-random score"]
    return markdown_rows(header, body) + "\n" + _correlation_sentence(rows)


def _correlation_sentence(rows: list[dict]) -> str:
    """How many (variant, site) correlations are positive, negative or undecided, by interval."""
    signs = {"positive": 0, "negative": 0, "undecided": 0}
    for row in rows:
        for site in sites_of(rows):
            stats = row.get(f"{site}/spearman")
            if not stats or not all(math.isfinite(stats[k]) for k in ("ci_low", "ci_high")):
                continue
            sign = ("positive" if stats["ci_low"] > 0 else "negative" if stats["ci_high"] < 0
                    else "undecided")
            signs[sign] += 1
    total = sum(signs.values())
    return (f"Of {total} (variant, site) pairs, the explanation score's correlation with "
            f"selectivity is positive in {signs['positive']}, negative in "
            f"{signs['negative']} and undecided (interval includes 0) in {signs['undecided']}.")


def _wrapped(markdown: str) -> str:
    """Prose lines wrapped at 100 columns like the rest of the README; table lines kept."""
    return "\n".join(line if line.startswith("|")
                     else textwrap.fill(line, 100, break_on_hyphens=False)
                     for line in markdown.splitlines())


def study_rows(workdir: Path) -> list[dict]:
    """The study report's own rows (`report/ablation.json`), so the README repeats its numbers
    exactly; rebuilt with the report's settings where the report is missing or old."""
    report = StudyLayout(workdir).report.ablation_json
    if report.exists():
        saved = json.loads(report.read_text())
        if isinstance(saved, dict):  # older reports (a bare list) lack the reference losses
            return saved["variants"]
    return build_table(workdir)


def study_validity(workdir: Path, rows: list[dict]) -> dict | None:
    """The study report's validity section (`report/ablation.json`), rebuilt where the report
    has none (`validity.validity_report`)."""
    report = StudyLayout(workdir).report.ablation_json
    if report.exists():
        saved = json.loads(report.read_text())
        if isinstance(saved, dict) and "validity" in saved:
            return saved["validity"]
    return validity_report(rows, study_runs(workdir), study_controls(workdir))


def study_blocks(workdir: str | Path) -> dict[str, str]:
    """`{block: markdown}` for every README block, from the study in `workdir`."""
    workdir = Path(workdir)
    rows = study_rows(workdir)
    answer = answer_markdown(rows).removeprefix("## Answer\n\n")
    header, body = floor_gap_cells(rows)
    floor = markdown_rows(header, body).strip() if body else "(no planted corpus: no floor)"
    controls = (controls_markdown(rows).removeprefix("## Controls\n\n").strip()
                or "(this study has no controls)")
    return {"facts": _wrapped(facts_text(workdir, rows)), "answer": _wrapped(answer.strip()),
            "controls": _wrapped(controls),
            "table": compact_table(rows).strip(), "floor": floor,
            "truth": _wrapped(truth_table(rows).strip()),
            "validity": (_wrapped(validity_markdown(study_validity(workdir, rows),
                                                    heading=False).strip())
                         or "(no planted corpus: no truth to check the measures against)"),
            "sae": (_wrapped(sae_markdown(rows).removeprefix("## SAEs\n\n").strip())
                    or "(this study fits no SAE)")}


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    """`text` with each block's content replaced; every block's markers must be present once."""
    for block, content in blocks.items():
        begin, end = _marker(block, "begin"), _marker(block, "end")
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        if len(pattern.findall(text)) != 1:
            raise ValueError(f"the README needs exactly one {begin} ... {end} pair (found "
                             f"{len(pattern.findall(text))}); add them around the study's "
                             f"{block}")
        replacement = f"{begin}\n{content}\n{end}"
        text = pattern.sub(lambda _, new=replacement: new, text)
    return text


def summary_block(workdir: str | Path) -> str:
    """The facts, the compact table and the answer's sentences of a study in one block (for a
    second study, such as the natural-text one or the A/A check, that the README summarises
    beside the default)."""
    workdir = Path(workdir)
    rows = study_rows(workdir)
    return "\n\n".join([_wrapped(facts_text(workdir, rows)), compact_table(rows).strip(),
                        _wrapped("\n\n".join(answer_sentences(rows)))])


def regenerate_readme(workdir: str | Path, readme: str | Path, as_block: str = "") -> None:
    """Rewrites the study blocks of `readme` from `workdir`; with `as_block`, only that block,
    with the study's summary (`summary_block`)."""
    readme = Path(readme)
    blocks = {as_block: summary_block(workdir)} if as_block else study_blocks(workdir)
    write_text_atomically(readme, replace_blocks(readme.read_text(), blocks))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    workdir, readme = flags.FLAGS.workdir, flags.FLAGS.readme
    problem = not_a_study(workdir)
    if problem:
        raise app.UsageError(problem)
    try:
        regenerate_readme(workdir, readme, flags.FLAGS.as_block)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    print(f"rewrote the study blocks of {readme} from {workdir}")


if __name__ == "__main__":
    # Defined only when run as a command: the module's functions are imported beside
    # crate_jax.main, whose --workdir would otherwise be defined twice.
    flags.DEFINE_string("workdir", None, "The study's workdir (holding study.json).")
    flags.DEFINE_string("readme", "README.md", "The README whose study blocks to rewrite.")
    flags.DEFINE_string("as_block", "", "Write only this block (e.g. stdlib) with the study's "
                        "facts and compact table, for a second study.")
    app.run(main)
