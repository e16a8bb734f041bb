"""The interpretability stage never reuses or relabels results whose inputs changed, never
rebuilds the tokenizer, repairs its append-only files on open and retries failed neurons."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from openai_stub import OpenAIStub
from run_helpers import REPO, TRAINED_STEPS, copy_run, interp_config

from crate_jax.data.tokenizer import TokenizerError
from crate_jax.interp.activations.capture import InterpretabilityError
from crate_jax.interp.activations.records import ActivationRecord, NeuronId, NeuronRecord
from crate_jax.interp.evaluate import evaluate_interpretability
from crate_jax.interp.explanations.neuron_scoring import SCORES, explain_layer
from crate_jax.interp.explanations.token_lookup import TokenLookupExplainer
from crate_jax.train.loop import train_and_evaluate

SMALL_INTERP = dict(sites="ista", num_sequences=16, seq_len=64, window=16, top_k=8, random_k=8,
                    quantile_bins=2, per_bin=2, neurons_per_layer=8, bootstrap_samples=100)


def _config(prepared, num_steps=TRAINED_STEPS, **interp):
    return interp_config(prepared, {**SMALL_INTERP, **interp}, num_steps)


def _moved_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "moved interp/" in line]


def _files(folder) -> dict:
    """Every file under `folder` with its bytes and modification time."""
    return {path.relative_to(folder): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_interp_after_more_training_moves_old_outputs_aside_and_recomputes(prepared, trained,
                                                                           tmp_path, capsys):
    workdir = copy_run(trained, tmp_path, "run")
    evaluate_interpretability(_config(prepared), workdir)
    records = workdir / "interp" / "records" / "ista" / "layer_0.jsonl"
    old_records = records.read_text()

    train_and_evaluate(_config(prepared, num_steps=40), workdir)
    capsys.readouterr()
    summary = evaluate_interpretability(_config(prepared, num_steps=40), workdir)
    (moved,) = _moved_lines(capsys.readouterr().out)
    assert re.fullmatch(r"interp: inputs changed \(checkpoint_step 30 -> 40, params_sha256 "
                        r"\w+ -> \w+\); moved interp/ to interp\.stale-1/ and recomputing", moved)
    assert summary["checkpoint_step"] == 40
    stale = workdir / "interp.stale-1"
    assert (stale / "records" / "ista" / "layer_0.jsonl").read_text() == old_records
    assert json.loads((stale / "inputs.json").read_text())["checkpoint_step"] == 30
    assert records.read_text() != old_records
    assert json.loads((workdir / "interp" / "inputs.json").read_text())["checkpoint_step"] == 40


def test_other_interp_settings_recompute_and_the_same_settings_resume(prepared, trained,
                                                                      tmp_path, capsys):
    workdir = copy_run(trained, tmp_path, "run")
    interp = workdir / "interp"
    evaluate_interpretability(_config(prepared), workdir)
    capsys.readouterr()

    summary = evaluate_interpretability(_config(prepared, neurons_per_layer=12), workdir)
    (moved,) = _moved_lines(capsys.readouterr().out)
    assert moved == ("interp: inputs changed (interp.neurons_per_layer 8 -> 12); moved interp/ "
                     "to interp.stale-1/ and recomputing")
    assert summary["sites"]["ista"]["0"]["neurons"] == 12
    assert len((interp / "records" / "ista" / "layer_0.jsonl").read_text().splitlines()) == 12
    assert len((workdir / "interp.stale-1" / "scores" / "ista" / "layer_0" / "scores.jsonl")
               .read_text().splitlines()) == 8

    # Settings that change only speed or presentation: everything on disk is reused as it is.
    before = _files(interp)
    faster = _config(prepared, neurons_per_layer=12, workers=2, batch_size=4,
                     bootstrap_samples=50, retry_failed=False)
    faster.model.attention_impl = "xla"  # another kernel, the same model
    evaluate_interpretability(faster, workdir)
    assert not _moved_lines(capsys.readouterr().out)
    assert not (workdir / "interp.stale-2").exists()
    after = _files(interp)
    assert set(after) == set(before)
    assert {path for path in before if before[path] != after[path]} <= {
        Path("summary.json"), Path("report.md")}

    # Outputs without the record of their inputs (written before it existed) are not trusted.
    (interp / "inputs.json").unlink()
    evaluate_interpretability(_config(prepared, neurons_per_layer=12), workdir)
    (moved,) = _moved_lines(capsys.readouterr().out)
    assert "no inputs.json" in moved and "interp.stale-2/" in moved
    assert (interp / "inputs.json").exists()


def test_missing_tokenizer_is_a_fatal_error_and_is_not_rebuilt(prepared, trained, tmp_path):
    workdir = copy_run(trained, tmp_path, "run")
    tokenizer = workdir / "data" / "tokenizer.json"
    tokenizer.unlink()
    args = [sys.executable, "-m", "crate_jax.main", "--config=configs/crate.py",
            f"--workdir={workdir}", "--config.stages=interp",
            f"--config.data.data_dir={prepared / 'tfds'}", "--config.train.batch_size=8",
            "--config.train.seq_len=64", f"--config.train.num_steps={TRAINED_STEPS}",
            f"--config.train.checkpoint_every={TRAINED_STEPS}",
            *[f"--config.interp.{k}={v}" for k, v in SMALL_INTERP.items()]]
    done = subprocess.run(args, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    fatal = [line for line in done.stderr.splitlines() if line.startswith("FATAL")]
    assert len(fatal) == 1 and "tokenizer.json" in fatal[0], done.stderr[-2000:]
    assert not tokenizer.exists()
    assert not (workdir / "interp").exists()


def test_loading_a_saved_tokenizer_never_trains_one(tmp_path):
    from crate_jax.data.tokenizer import load_saved_tokenizer

    with pytest.raises(TokenizerError, match=r"tokenizer\.json is missing.*restore it"):
        load_saved_tokenizer("bpe", tmp_path / "data", 8192)
    assert not (tmp_path / "data").exists()


def test_a_cut_last_line_is_repaired_and_the_rerun_equals_an_uninterrupted_run(
        prepared, trained, tmp_path, capsys):
    config = _config(prepared)
    reference = copy_run(trained, tmp_path, "reference")
    evaluate_interpretability(config, reference)
    cut = copy_run(trained, tmp_path, "cut")
    evaluate_interpretability(config, cut)
    layer = cut / "interp" / "scores" / "ista" / "layer_0"
    for name, kept in (("explanations.jsonl", 5), ("scores.jsonl", 3)):
        lines = (layer / name).read_text().splitlines(keepends=True)
        (layer / name).write_text("".join(lines[:kept]) + lines[kept][:40])  # killed mid-write
    (cut / "interp" / "summary.json").unlink()
    capsys.readouterr()

    evaluate_interpretability(config, cut)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "partial" in line]
    assert len(warnings) == 2 and "scores.jsonl" in warnings[1]
    for name in ("explanations.jsonl", "scores.jsonl"):
        expected = reference / "interp" / "scores" / "ista" / "layer_0" / name
        assert (layer / name).read_bytes() == expected.read_bytes(), name


def _neurons() -> list[NeuronRecord]:
    records = [ActivationRecord(["a", "b", "c"], [0.0, float(k), 0.0]) for k in range(1, 9)]
    return [NeuronRecord(NeuronId(0, index), random_sample=records[:4],
                         most_positive_activation_records=records) for index in range(3)]


def test_a_damaged_middle_line_is_an_error_naming_the_file_and_line(tmp_path):
    from crate_jax.report.run_files import score_entries

    explain_layer(_neurons(), TokenLookupExplainer(), tmp_path)
    path = tmp_path / "explanations.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{garbage\n" + lines[2])
    with pytest.raises(InterpretabilityError, match=r"explanations\.jsonl line 2 is damaged"):
        explain_layer(_neurons(), TokenLookupExplainer(), tmp_path)
    with pytest.raises(InterpretabilityError, match=r"explanations\.jsonl line 2 is damaged"):
        score_entries(path)


def test_the_report_reads_the_last_line_per_neuron_and_leaves_a_cut_file_alone(tmp_path):
    from crate_jax.report.run_files import score_entries

    lines = [{"neuron": 0, "scores": {}, "failures": {"top_only": "bad answer"}},
             {"neuron": 1, "scores": {"top_only": 0.5}, "failures": {}},
             {"neuron": 0, "scores": {"top_only": 0.25}, "failures": {}}]
    path = tmp_path / "scores.jsonl"
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"neuron": 2, "sco'
    path.write_text(text)
    assert score_entries(path) == (lines[2], lines[1])
    assert path.read_text() == text


class _Script:
    """Answers to chat requests that the test switches: `empty` (no explanation at all), `prose`
    (explanations, but simulations and judgements that are not lists of numbers) or `good` (a
    number per token, a 0 or 1 per judged example)."""

    mode = "empty"

    def __call__(self, prompt: str) -> str:
        if self.mode == "empty":
            return ""
        simulation = re.search(r"Tokens \(\d+\): (.*)\n\nPredict", prompt)
        judged = re.search(r"Reply with a list of (\d+) numbers? \(0 or 1\)", prompt)
        if simulation is None and judged is None:
            return "short tokens"
        if self.mode == "prose":
            return "I cannot tell."
        if judged is not None:
            return json.dumps([k % 2 for k in range(int(judged.group(1)))])
        return json.dumps([len(token) % 11 for token in json.loads(simulation.group(1))])


def test_failed_neurons_are_retried_on_rerun_and_a_stage_where_all_failed_stops(
        prepared, trained, tmp_path):
    workdir = copy_run(trained, tmp_path, "run")
    script = _Script()
    server = OpenAIStub(chat=script)
    config = _config(prepared, neurons_per_layer=2, explainer="llm")
    config.interp.llm.update(dict(base_url=server.base_url, model="scripted", api_key_env="",
                                  simulator_mode="json", max_retries=0, timeout_s=10.0))
    layer = workdir / "interp" / "scores" / "ista" / "layer_0"

    def lines(name):
        return [json.loads(line) for line in (layer / name).read_text().splitlines()]

    try:
        with pytest.raises(InterpretabilityError,
                           match=r"all 4 neurons failed.*gave no explanation.*rerun"):
            evaluate_interpretability(config, workdir)
        script.mode = "prose"
        with pytest.raises(InterpretabilityError, match=r"all 4 neurons failed.*no JSON list"):
            evaluate_interpretability(config, workdir)
        assert all("failure" not in entry["openai"] for entry in lines("explanations.jsonl")[2:])

        script.mode = "good"
        config.interp.retry_failed = False
        requests = len(server.requests)
        with pytest.raises(InterpretabilityError, match="interp.retry_failed=True"):
            evaluate_interpretability(config, workdir)
        assert len(server.requests) == requests  # nothing was asked again

        config.interp.retry_failed = True
        summary = evaluate_interpretability(config, workdir)
    finally:
        server.stop()
    assert len(lines("explanations.jsonl")) == 4  # failed, then redone once
    scores = lines("scores.jsonl")
    assert len(scores) == 6  # explanation failed, simulations failed, scored
    for entry in scores[-2:]:
        assert not entry["failures"]
        assert set(entry["scores"]) == set(entry["baseline_scores"]) == set(SCORES)
    for entry in summary["sites"]["ista"].values():
        assert all(split["n_failed"] == 0 for split in entry["splits"].values())
