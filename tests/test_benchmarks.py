"""The throughput benchmark as users run it: a subprocess that writes its table and JSON record."""

import json
import os
import subprocess
import sys

from run_helpers import REPO, miniature_study

from configs import gpt2
from crate_jax.model import ModelConfig
from crate_jax.model.flops import model_flops_per_token


def _run_benchmark(script: str, *arguments: str) -> subprocess.CompletedProcess:
    """`python <script> <arguments>` on the CPU, as users run it; it must succeed."""
    finished = subprocess.run([sys.executable, script, *arguments], cwd=REPO,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return finished


def test_benchmark_reports_every_column_and_its_provenance(tmp_path):
    """One variant, 2 timed steps of a small batch (the chunked head): seconds on a CPU."""
    out = tmp_path / "throughput.json"
    finished = _run_benchmark("benchmarks/train_throughput.py", "--variants=gpt2",
                              "--size=tiny", "--steps=2", "--warmup=1", "--batch_size=2",
                              "--seq_len=32", "--head_impl=chunked", f"--json_out={out}")

    record = json.loads(out.read_text())
    assert record["machine"]["platform"] == "cpu"
    assert record["machine"]["device_count"] >= 1 and record["machine"]["cpu_count"] >= 1
    assert {"jax", "jaxlib", "flax", "optax", "python"} <= set(record["versions"])
    assert "benchmarks/train_throughput.py" in record["command"]
    assert "--json_out" in record["command"]
    assert record["date"].endswith("Z")
    assert [row["variant"] for row in record["results"]] == ["gpt2"]
    for row in record["results"]:
        assert row["batch_size"] == 2 and row["seq_len"] == 32 and row["timed_steps"] == 2
        assert row["compile_seconds"] > 0 and row["median_seconds_per_step"] > 0
        assert row["tokens_per_second"] == 2 * 32 / row["median_seconds_per_step"]
        assert row["model_config"]["attention"] in ("mssa", "mhsa")
        assert row["model_config"]["head_impl"] == "chunked"
        assert row["mfu"] is None  # no peak for a CPU
        assert row["peak_memory_bytes"] is None  # the CPU backend reports no memory stats
    gpt2_model = ModelConfig.from_mapping(gpt2.get_config("tiny").model)
    assert record["results"][0]["model_flops_per_token"] == model_flops_per_token(gpt2_model, 32)

    table = finished.stdout
    assert "| variant |" in table and "| gpt2 |" in table
    assert "n/a on cpu" in table


def test_statistics_calibration_runs_and_tables_both_procedures():
    """The calibration the README quotes, at a size of seconds: a table with a row per run count."""
    command = [sys.executable, "benchmarks/statistics_calibration.py", "--runs=3",
               "--replicates=20", "--bootstrap_samples=50", "--neurons=32"]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    rows = [line for line in finished.stdout.splitlines() if line.startswith("| 3 |")]
    assert len(rows) == 1 and rows[0].count("%") == 4


def test_interp_speed_tables_every_explainer_on_a_planted_run(tmp_path):
    """A one-run planted study (10 training steps, a few records per neuron), then the interp
    benchmark on 4 neurons per site and layer: a row per explainer, every rate positive."""
    from configs import ablation
    from crate_jax.study import run_study

    config = ablation.get_config()
    config.data.source = "planted:300"
    run_study(miniature_study(config, variants="crate", seeds="0", controls=False),
              tmp_path / "study")

    out = tmp_path / "interp_speed.json"
    finished = _run_benchmark("benchmarks/interp_speed.py",
                              f"--run={tmp_path / 'study' / 'runs' / 'crate_seed0'}",
                              "--neurons=4", f"--json_out={out}")

    record = json.loads(out.read_text())
    assert record["sites"] == ["attn", "ista", "resid"]
    assert record["interp"]["lookup_tokens"] == config.interp.lookup_tokens
    assert record["machine"]["cpu_count"] >= 1 and "python" in record["versions"]
    kinds = ("token_lookup", "ngram", "truth")
    assert [row["kind"] for row in record["results"]] == list(kinds)
    assert record["cases_neurons_per_second"] > 0
    for row in record["results"]:
        assert row["neurons"] == 3 * 2 * 4  # sites x layers x neurons
        assert row["explanation_failures"] == 0
        for block in ("explain", "simulation", "detection_fuzzing"):
            assert row[f"{block}_neurons_per_second"] > 0
            assert row[f"{block}_neurons_per_second"] == (
                row["neurons"] / row[f"{block}_seconds"])
    rows = [line for line in finished.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| kind | explain neurons/s | simulation neurons/s |")
    for kind in kinds:
        cells = next(line for line in rows if line.startswith(f"| {kind} |")).split("|")[2:5]
        assert all(float(cell.replace(",", "")) > 0 for cell in cells)


def test_sae_throughput_tables_both_modes():
    finished = _run_benchmark("benchmarks/sae_throughput.py", "--steps=1", "--batch_size=1",
                              "--seq_len=16", "--expansion=1", "--k=4")
    rows = [line for line in finished.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| SAE step alone",
                                                        "| model forward + SAE step"]
    assert all(float(row.split(" | ")[2].replace(",", "").rstrip(" |")) > 0 for row in rows[1:])


def test_study_breakdown_times_every_stage_of_a_miniature_study(tmp_path):
    """A one-run study of seconds through the breakdown: each stage the run went through has a
    row with its time, and the stages with the imports and bookkeeping add up to the total."""
    budget = {"data.source": "planted:300", "study.variants": "no_ista", "study.seeds": "0",
              "study.controls": "False", "train.num_steps": 10, "train.batch_size": 8,
              "train.seq_len": 64, "train.warmup_steps": 2, "train.eval_every": 10,
              "train.eval_batches": 2, "train.checkpoint_every": 10,
              "train.progress_bar": "False", "interp.num_sequences": 8, "interp.seq_len": 64,
              "interp.window": 16, "interp.top_k": 4, "interp.random_k": 4,
              "interp.quantile_bins": 2, "interp.per_bin": 2, "interp.neurons_per_layer": 8}
    out = tmp_path / "breakdown.json"
    finished = _run_benchmark("benchmarks/study_breakdown.py", "--config=configs/ablation.py",
                              *(f"--config.{key}={value}" for key, value in budget.items()),
                              f"--workdir={tmp_path / 'study'}", f"--json_out={out}")

    record = json.loads(out.read_text())
    phases = {row["phase"]: row for row in record["phases"]}
    stages = ("imports", "data", "train", "interp", "report")
    assert all(phases[stage]["seconds"] > 0 for stage in stages)
    assert "sae" not in phases and "control init" not in phases  # this study has neither
    for part in ("train/compile (XLA)", "train/evaluation", "interp/mining records",
                 "interp/explaining", "interp/simulating and scoring", "interp/ground truth"):
        assert phases[part]["seconds"] > 0, part
    total = phases["total (1 runs, 0 controls)"]
    other = phases["other (study bookkeeping, locks, copies)"]
    assert abs(sum(phases[stage]["seconds"] for stage in stages) + other["seconds"]
               - total["seconds"]) < 1e-6
    assert other["seconds"] >= 0 and 0 < total["raised_peak_to"] <= record["peak_memory_bytes"]
    assert (tmp_path / "study" / "report" / "index.html").exists()
    assert "| total (1 runs, 0 controls) |" in finished.stdout


def test_copy_budget_measures_each_checkpoint_and_resumes(tmp_path):
    """Two budgets of a small planted run: a row per measured step with the loss above the floor
    on copied tokens; the rerun finds the runs finished (no training time) and measures the
    same numbers from the same checkpoints."""
    budget = {"data.source": "planted:300", "train.batch_size": 8, "train.seq_len": 64,
              "train.warmup_steps": 2, "train.eval_batches": 2, "interp.num_sequences": 16,
              "interp.seq_len": 64}
    arguments = ["--config=configs/ablation.py",
                 *(f"--config.{key}={value}" for key, value in budget.items()),
                 "--variants=gpt2", "--steps=4,8", "--every=4", f"--workdir={tmp_path / 'runs'}"]
    records = []
    for attempt in ("first", "again"):
        out = tmp_path / f"{attempt}.json"
        _run_benchmark("benchmarks/copy_budget.py", *arguments, f"--json_out={out}")
        records.append(json.loads(out.read_text())["rows"])

    first, again = records
    assert [(r["budget"], r["step"]) for r in first] == [(4, 4), (8, 4), (8, 8)]
    assert all(r["train_seconds"] is None for r in again)
    assert [r["train_seconds"] is None for r in first] == [False, True, False]
    for r in first:
        assert r["copy:copied_above_floor"] > 0.5  # 8 steps copy nothing yet
        assert abs(r["loss"] - r["floor"] - r["above_floor"]) < 1e-9
    assert first[1]["loss"] != first[2]["loss"]  # step 4 and step 8 of one run differ
    for r, s in zip(first, again, strict=True):
        assert {k: v for k, v in r.items() if k != "train_seconds"} == \
            {k: v for k, v in s.items() if k != "train_seconds"}


def test_gpu_table_refuses_a_folder_that_is_not_the_papers_code(tmp_path):
    """The GPU check's one command names what is wrong before it starts any benchmark (a wasted
    device lease otherwise), and writes nothing."""
    finished = subprocess.run(["bash", "benchmarks/gpu_table.sh", str(tmp_path),
                               str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
    assert finished.returncode == 2
    assert finished.stderr.startswith("FATAL: ") and "crate_overcomplete.py" in finished.stderr
    assert not (tmp_path / "out").exists()
