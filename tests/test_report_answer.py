"""The study's answer is derived from run-level tests alone, with Holm's correction over the
comparisons it states, and refuses to conclude from a run that does not beat the bigram
reference. Rows follow `ablation_table.build_table`'s schema."""

import re

from run_helpers import REPO

from crate_jax.report.answer import answer_markdown, answer_sentences
from crate_jax.report.readme import BLOCKS


def _score(mean):
    return {"mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05, "n": 100}


def _difference(value, low, high, p_value=0.5):
    """A Welch comparison of 5 runs against 5 (8 degrees of freedom)."""
    return {"difference": value, "ci_low": low, "ci_high": high, "p_value": p_value,
            "freedom": 8.0, "n": 5, "n_reference": 5}


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
    attention["attn/random_only/vs_crate"] = _difference(-0.093, -0.169, -0.027, 0.001)
    no_ista = _row("no_ista", ("attn", "resid"),
                   **{f"{site}__{split}__vs_crate": NO_CHANGE for site in ("attn", "resid")
                      for split in ("top_and_random", "random_only")})
    rows = [crate, no_ista, attention, _row("gpt2", ("mlp", "attn", "resid"))]
    if not references:
        for row in rows:
            row["undertrained"] = None
    return rows


def test_each_ablation_gets_one_sentence_from_its_holm_adjusted_tests():
    # 10 comparisons with p: 0.001 * 10 = 0.01 after Holm, detected; the rest stay at 0.5.
    # Detectable with 80% power at 0.05 / 10: (t(0.9975, 8) + t(0.8, 8)) * half-width / t(0.975, 8)
    # = 0.123 for the +-0.06 intervals, 0.145 for the +-0.071 one.
    assert answer_sentences(_study()) == [
        "Ablation A (no_ista vs crate): no detectable change on any shared site. (Holm over the "
        "answer's 10 comparisons, family-wise error 5%; with 5 runs a side, differences of 0.12 "
        "to 0.12 or more are detected with 80% power.)",
        "Ablation B (standard_attention vs crate): lowers attn random-only by 0.09 [0.03, 0.17] "
        "(Holm p = 0.010); no detectable change elsewhere. (Holm over the answer's 10 "
        "comparisons, family-wise error 5%; with 5 runs a side, differences of 0.12 to 0.15 or "
        "more are detected with 80% power.)"]
    markdown = answer_markdown(_study())
    assert "| B: standard_attention − crate | attn | 0.010 [-0.050, 0.070], p = 1.000 | -0.093 " \
           "[-0.169, -0.027], p = 0.010 |" in markdown
    assert "gpt2" not in markdown  # the answer holds only the like-for-like ablations
    assert "| A: no_ista − crate | ista |" not in markdown  # no_ista has no ista site


def test_an_unadjusted_detection_is_not_a_detection_after_holm():
    """p = 0.01 excludes 0 at 95% on its own, but not among 10 comparisons (0.1 after Holm)."""
    rows = _study()
    rows[2]["attn/random_only/vs_crate"] = _difference(-0.093, -0.169, -0.027, 0.01)
    assert answer_sentences(rows)[1].startswith(
        "Ablation B (standard_attention vs crate): no detectable change on any shared site.")


def test_a_copy_of_crate_is_compared_as_an_a_a_check():
    rows = _study()
    copy = dict(rows[0], variant="crate_copy", config="crate")
    copy["attn/top_and_random/vs_crate"] = _difference(0.004, -0.03, 0.04, 0.8)
    sentences = answer_sentences([*rows, copy])
    assert sentences[2].startswith("A/A check (crate_copy vs crate): no detectable change on "
                                   "any shared site.")
    assert "| A/A: crate_copy − crate | attn | 0.004 [-0.030, 0.070]" not in \
        answer_markdown([*rows, copy])
    assert "| A/A: crate_copy − crate | attn | 0.004 [-0.030, 0.040]" in \
        answer_markdown([*rows, copy])


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


def test_a_comparison_without_a_p_value_detects_nothing():
    """One run per variant gives a difference but no spread to test it by: not a finding."""
    rows = _study()
    rows[1]["attn/recovery/vs_crate"] = {"difference": 0.075, "ci_low": float("nan"),
                                         "ci_high": float("nan"), "p_value": float("nan")}
    assert answer_sentences(rows)[0].startswith(
        "Ablation A (no_ista vs crate): no detectable change on any shared site")
    rows[1]["attn/recovery/vs_crate"] = _difference(0.075, 0.02, 0.12, 0.0001)
    assert "raises attn recovery by 0.07 [0.02, 0.12] (Holm p = 0.001)" in \
        answer_sentences(rows)[0]


def test_an_sae_matched_to_crates_ista_joins_the_holm_family_with_a_sentence_of_its_own():
    """gpt2's `sae_mlp`, as wide and sparse as CRATE's ISTA (`sae_mlp/vs_crate_site`), is
    compared with it; its p values share the ablations' Holm family (11 here, not 10)."""
    rows = _study()
    gpt2 = rows[3]
    for split in ("top_and_random", "random_only", "anthropic"):
        gpt2[f"sae_mlp/{split}"] = _score(0.2)
    gpt2["sae_mlp/vs_crate_site"] = "ista"
    gpt2["sae_mlp/top_and_random/vs_crate"] = _difference(-0.2, -0.3, -0.1, 0.001)
    sentences = answer_sentences(rows)
    assert len(sentences) == 3
    assert sentences[2] == (
        "SAE vs CRATE's own sparse code (gpt2's sae_mlp, fitted afterwards, vs crate's ista, at "
        "equal width and L0): lowers sae_mlp top-and-random by 0.20 [0.10, 0.30] (Holm p = "
        "0.011). (Holm over the answer's 11 comparisons, family-wise error 5%; with 5 runs a "
        "side, differences of 0.21 to 0.21 or more are detected with 80% power.)")
    assert "answer's 11 comparisons" in sentences[0]
    assert "| SAE: gpt2 − crate | sae_mlp vs ista | -0.200 [-0.300, -0.100], p = 0.011 |" in \
        answer_markdown(rows)
