"""The interpretability stage end to end on a briefly trained tiny CRATE: artifacts, resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from run_helpers import REPO, TRAINED_STEPS, copy_run, interp_config, workdir_with_data

from crate_jax.interp.activations.capture import InterpretabilityError
from crate_jax.interp.activations.records import from_json
from crate_jax.interp.evaluate import evaluate_interpretability

SMALL_INTERP = dict(num_sequences=24, seq_len=64, window=16, top_k=8, random_k=8,
                    quantile_bins=2, per_bin=2, neurons_per_layer=24, bootstrap_samples=200)


def _interp_config(prepared, **interp):
    return interp_config(prepared, {**SMALL_INTERP, **interp})


def _scores(workdir):
    summary = json.loads((workdir / "interp" / "summary.json").read_text())
    return {(site, layer): entry["splits"] for site, layers in summary["sites"].items()
            for layer, entry in layers.items()}


def test_evaluation_writes_records_scores_summary_and_report(prepared, trained, tmp_path):
    workdir = copy_run(trained, tmp_path, "run")
    summary = evaluate_interpretability(_interp_config(prepared), workdir)
    assert set(summary["sites"]) == {"ista", "attn", "resid"}
    interp = workdir / "interp"
    for site in ("ista", "attn", "resid"):
        for layer in ("0", "1"):
            entry = summary["sites"][site][layer]
            assert entry["neurons"] == 24
            assert entry["splits"]["top_and_random"]["n"] + \
                entry["splits"]["top_and_random"]["n_nan"] == 24
            records = (interp / "records" / site / f"layer_{layer}.jsonl").read_text()
            neurons = [from_json(line) for line in records.splitlines()]
            assert len(neurons) == 24 and len(neurons[0].most_positive_activation_records) <= 8
            assert all(len(r.tokens) == 16 for r in neurons[0].most_positive_activation_records)
    statistics = np.load(interp / "records" / "ista" / "layer_0_statistics.npz")
    assert statistics["neuron_index"].shape == (24,)
    assert set(statistics) >= {"mean", "variance", "max", "firing_frequency"}
    assert (statistics["firing_frequency"] <= 1).all() and (statistics["max"] >= 0).all()
    ista = summary["sites"]["ista"]["0"]
    assert ista["sparsity"]["zero_fraction"] > 0.2  # ISTA codes have exact zeros
    assert summary["sites"]["resid"]["0"]["sparsity"]["zero_fraction"] == 0.0
    # Real explanations beat another neuron's explanation on the same records.
    assert ista["splits"]["top_and_random"]["mean"] > ista["baseline"]["top_and_random"]["mean"]
    report = (interp / "report.md").read_text()
    assert "| ista | 0 | 24 |" in report and "| resid | 1 | 24 |" in report
    line = json.loads((interp / "scores" / "ista" / "layer_0" / "scores.jsonl")
                      .read_text().splitlines()[0])
    assert set(line["scores"]) | set(line["failures"]) == {
        "top_and_random", "random_only", "top_only", "anthropic", "detection",
        "detection_auroc", "fuzzing"}
    assert line["explanation"].startswith(("fires on:", "never fires"))


def test_killed_evaluation_resumes_to_the_same_scores(prepared, trained, tmp_path):
    reference = copy_run(trained, tmp_path, "reference")
    evaluate_interpretability(_interp_config(prepared, neurons_per_layer=48), reference)

    killed = copy_run(trained, tmp_path, "killed")
    args = [sys.executable, "-m", "crate_jax.main", "--config=configs/crate.py",
            f"--workdir={killed}", "--config.stages=interp",
            f"--config.data.data_dir={prepared / 'tfds'}", "--config.train.batch_size=8",
            "--config.train.seq_len=64", f"--config.train.num_steps={TRAINED_STEPS}",
            "--config.train.checkpoint_every=30",
            *[f"--config.interp.{k}={v}" for k, v in {**SMALL_INTERP,
                                                      "neurons_per_layer": 48}.items()]]
    process = subprocess.Popen(args, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_scores = killed / "interp" / "scores" / "ista" / "layer_0" / "scores.jsonl"
    deadline = time.time() + 240
    while not first_scores.exists() and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (killed / "interp" / "summary.json").exists(), "killed before it finished"

    evaluate_interpretability(_interp_config(prepared, neurons_per_layer=48), killed)
    assert _scores(killed) == _scores(reference)


def test_interrupted_mining_is_redone_identically(prepared, trained, tmp_path):
    workdir = copy_run(trained, tmp_path, "run")
    config = _interp_config(prepared)
    evaluate_interpretability(config, workdir)
    records = workdir / "interp" / "records" / "ista" / "layer_1.jsonl"
    first = records.read_text()
    (workdir / "interp" / "sparsity.json").unlink()  # as if killed while mining
    records.write_text(first[:100])
    evaluate_interpretability(config, workdir)
    assert records.read_text() == first


def test_evaluation_without_a_checkpoint_or_with_a_missing_site_is_a_clear_error(prepared,
                                                                                 tmp_path):
    workdir = workdir_with_data(prepared, tmp_path)
    with pytest.raises(InterpretabilityError, match="no checkpoint .* run the 'train' stage"):
        evaluate_interpretability(_interp_config(prepared), workdir)
    config = _interp_config(prepared, sites="mlp")
    with pytest.raises(InterpretabilityError, match="asks for mlp, which this model does not"):
        evaluate_interpretability(config, workdir)


def test_ngram_explains_natural_text_beside_the_headline_explainer(prepared, trained, tmp_path):
    """The stdlib corpus (BPE tokens): `ngram` as the headline explainer, `token_lookup`
    compared beside it; both get every score, in their own folders."""
    workdir = copy_run(trained, tmp_path, "run")
    config = _interp_config(prepared, sites="ista", neurons_per_layer=8, explainer="ngram",
                            compared_explainers="token_lookup")
    summary = evaluate_interpretability(config, workdir)
    assert summary["explainer"] == "ngram"
    assert set(summary["compared_explainers"]) == {"token_lookup"}
    for folder, starts in ((workdir / "interp" / "scores", ("fires on:", "never fires")),
                           (workdir / "interp" / "explainers" / "token_lookup",
                            ("fires on:", "never fires"))):
        lines = [json.loads(line) for line in
                 (folder / "ista" / "layer_0" / "scores.jsonl").read_text().splitlines()]
        assert len(lines) == 8
        assert all(line["explanation"].startswith(starts) for line in lines)
        assert all({"top_and_random", "detection", "fuzzing"} <= set(line["scores"])
                   | set(line["failures"]) for line in lines)
    # Patterns name tokens of the text as the tokenizer decodes them (leading spaces kept).
    explanations = [json.loads(line)["openai"] for line in
                    (workdir / "interp" / "scores" / "ista" / "layer_0" / "explanations.jsonl")
                    .read_text().splitlines()]
    assert any(e["details"]["patterns"] for e in explanations)
    assert not (workdir / "interp" / "ground_truth.json").exists()  # natural text: no truth
