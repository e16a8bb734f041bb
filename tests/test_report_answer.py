"""The study's answer is derived from the intervals alone, and refuses to conclude from a run that
does not beat the bigram reference. Rows follow `ablation_table.build_table`'s schema."""

import re

from run_helpers import REPO

from crate_jax.report.answer import answer_markdown, answer_sentences
from crate_jax.report.readme import BLOCKS


def _score(mean):
    return {"mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05, "n": 100}


def _difference(value, low, high):
    return {"difference": value, "ci_low": low, "ci_high": high}


def _row(variant, sites, undertrained=False, **differences):
    row = {"variant": variant, "undertrained": undertrained,
           "undertrained_runs": [f"{variant}_seed1"] if undertrained else []}
    for site in sites:
        for split in ("top_and_random", "random_only", "anthropic"):
            row[f"{site}/{split}"] = _score(0.3)
    for key, value in differences.items():
        row[key.replace("__", "/")] = value
    return row


NO_CHANGE = _difference(0.01, -0.05, 0.07)


def _study(undertrained=False, references=True):
    crate = _row("crate", ("ista", "attn", "resid"))
    attention = _row("standard_attention", ("ista", "attn", "resid"), undertrained,
                     **{f"{site}__{split}__vs_crate": NO_CHANGE
                        for site in ("ista", "attn", "resid")
                        for split in ("top_and_random", "random_only")})
    attention["attn/random_only/vs_crate"] = _difference(-0.093, -0.169, -0.027)
    no_ista = _row("no_ista", ("attn", "resid"),
                   **{f"{site}__{split}__vs_crate": NO_CHANGE for site in ("attn", "resid")
                      for split in ("top_and_random", "random_only")})
    rows = [crate, no_ista, attention, _row("gpt2", ("mlp", "attn", "resid"))]
    if not references:
        for row in rows:
            row["undertrained"] = None
    return rows


def test_each_ablation_gets_one_sentence_from_its_intervals():
    assert answer_sentences(_study()) == [
        "Ablation A (no_ista vs crate): no detectable change on any shared site (every interval "
        "includes 0).",
        "Ablation B (standard_attention vs crate): lowers attn random-only by 0.09 [0.03, 0.17]; "
        "no detectable change elsewhere."]
    markdown = answer_markdown(_study())
    assert "| B: standard_attention − crate | attn | 0.010 [-0.050, 0.070] | -0.093 [-0.169, " \
           "-0.027] |" in markdown
    assert "gpt2" not in markdown  # the answer holds only the like-for-like ablations
    assert "| A: no_ista − crate | ista |" not in markdown  # no_ista has no ista site


def test_an_undertrained_run_gets_no_conclusion():
    sentences = answer_sentences(_study(undertrained=True))
    assert sentences[1] == ("Ablation B (standard_attention vs crate): no conclusion, "
                            "standard_attention_seed1 does not beat the bigram reference loss "
                            "(undertrained).")
    assert "(undertrained)" in answer_markdown(_study(undertrained=True))
    assert "unchecked" in answer_sentences(_study(references=False))[0]


def test_readme_has_each_study_block_once():
    readme = (REPO / "README.md").read_text()
    for block in BLOCKS:
        assert len(re.findall(rf"<!-- study:{block}:begin -->.*?<!-- study:{block}:end -->",
                              readme, re.DOTALL)) == 1, block


def test_a_zero_width_interval_detects_nothing():
    """One seed of a per-run number (recovery) gives an interval of width 0: not a finding."""
    rows = _study()
    rows[1]["attn/recovery/vs_crate"] = _difference(0.075, 0.075, 0.075)
    assert answer_sentences(rows)[0].startswith(
        "Ablation A (no_ista vs crate): no detectable change on any shared site")
    rows[1]["attn/recovery/vs_crate"] = _difference(0.075, 0.02, 0.12)
    assert "raises attn recovery by 0.07 [0.02, 0.12]" in answer_sentences(rows)[0]
