"""The ablation study stage: validation before training, and resuming without retraining."""

import shutil
import subprocess

import pytest
from run_helpers import with_data, workdir_with_data

from configs import ablation
from crate_jax.model import ConfigError
from crate_jax.study import run_configs, run_study


def _study(prepared, **study):
    config = with_data(ablation.get_config("tiny"), prepared)
    config.train.update(dict(num_steps=10, batch_size=8, seq_len=64, warmup_steps=2,
                             log_every=5, eval_every=10, eval_batches=2, checkpoint_every=10,
                             progress_bar=False))
    config.interp.update(dict(num_sequences=8, seq_len=64, window=16, top_k=4, random_k=4,
                              quantile_bins=2, per_bin=2, neurons_per_layer=8,
                              bootstrap_samples=100))
    config.study.update(study)
    return config


def test_every_run_shares_the_study_settings_and_keeps_its_ablation_keys(prepared):
    runs = run_configs(_study(prepared))
    assert len(runs) == 15
    assert runs["no_ista_seed1"].model.sparse_block == "none"
    assert runs["standard_attention_seed2"].model.attention == "mhsa"
    assert runs["gpt2_seed0"].model.use_bias is False
    assert {run.seed for run in runs.values()} == {0, 1, 2}
    assert all(run.train.num_steps == 10 and run.interp.neurons_per_layer == 8
               for run in runs.values())


def test_unknown_variant_or_missing_site_fails_before_any_training(prepared, tmp_path):
    with pytest.raises(ConfigError, match="no configs/no_sta.py"):
        run_study(_study(prepared, variants="crate,no_sta"), tmp_path / "a")
    config = _study(prepared, variants="crate,gpt2")
    config.interp.sites = "ista,attn"
    with pytest.raises(ConfigError, match="variant 'gpt2' has no ista site"):
        run_study(config, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def miniature(prepared, tmp_path_factory):
    """A finished 2-variant, 1-seed study: (its config, its workdir)."""
    workdir = workdir_with_data(prepared, tmp_path_factory.mktemp("study"), "study")
    config = _study(prepared, variants="crate,no_ista", seeds="0")
    manifest = run_study(config, workdir)
    assert set(manifest["runs"]) == {"crate_seed0", "no_ista_seed0"}
    return config, workdir


def test_miniature_study_writes_every_report_file(miniature):
    _, workdir = miniature
    _check_report_against_run_files(workdir)


def test_an_interrupted_study_finishes_without_retraining_finished_runs(miniature):
    """As if killed while scoring no_ista: the rerun redoes only that run's missing work."""
    config, workdir = miniature
    stamps = {}
    for name in ("crate_seed0", "no_ista_seed0"):
        stamps[name] = (workdir / "runs" / name / "checkpoints" / "10").stat().st_mtime_ns
    interp = workdir / "runs" / "no_ista_seed0" / "interp"
    expected = _scores_of((interp / "summary.json").read_text())
    shutil.rmtree(interp / "scores")
    (interp / "summary.json").unlink()
    run_study(config, workdir)
    assert _scores_of((interp / "summary.json").read_text()) == expected
    for name, mtime in stamps.items():
        assert (workdir / "runs" / name / "checkpoints" / "10").stat().st_mtime_ns == mtime


def test_rerunning_a_finished_study_retrains_nothing(miniature):
    config, workdir = miniature
    stamps = {}
    for name in ("crate_seed0", "no_ista_seed0"):
        run_dir = workdir / "runs" / name
        stamps[name] = (run_dir / "checkpoints" / "10").stat().st_mtime_ns, \
            (run_dir / "interp" / "summary.json").read_text()
    run_study(config, workdir)  # finished runs are skipped, results unchanged
    for name, (mtime, summary) in stamps.items():
        run_dir = workdir / "runs" / name
        assert (run_dir / "checkpoints" / "10").stat().st_mtime_ns == mtime
        assert _scores_of(summary) == _scores_of((run_dir / "interp" / "summary.json").read_text())


def test_report_page_renders_in_a_headless_browser(miniature, tmp_path):
    """Opens index.html from disk in Chromium (no server, no network) and reads what it shows."""
    _, workdir = miniature
    page = workdir / "report" / "index.html"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium package)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<table id="ablation-table">' in dom.stdout
    assert "<td>crate</td>" in dom.stdout and "<td>no_ista</td>" in dom.stdout
    assert dom.stdout.count('class="neuron"') >= 2 and 'class="token"' in dom.stdout
    screenshot = tmp_path / "page.png"
    shot = subprocess.run([browser, *flags, f"--screenshot={screenshot}",
                           "--window-size=1280,2000", page.as_uri()], capture_output=True,
                          text=True, timeout=120)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one


def _scores_of(summary_text):
    import json

    return json.loads(summary_text)["sites"]


def _check_report_against_run_files(workdir):
    """The CSV's means equal those recomputed here from the per-run score files."""
    import csv
    import json
    import math

    rows = {row["variant"]: row for row in csv.DictReader(open(workdir / "report" /
                                                                "ablation.csv"))}
    assert set(rows) == {"crate", "no_ista"}
    markdown = (workdir / "report" / "ablation.md").read_text()
    assert markdown.startswith("## Answer") and "Ablation A (no_ista vs crate):" in markdown
    assert markdown.index("## Answer") < markdown.index("| variant |")
    assert (workdir / "report" / "ablation.json").exists()
    assert "neuron-viewer" in (workdir / "report" / "index.html").read_text()
    for name in ("scores_by_layer_top_and_random", "scores_by_layer_random_only",
                 "scores_by_layer_anthropic", "sparsity_by_layer", "validation_loss",
                 "score_vs_loss"):
        png = (workdir / "report" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, name
    assert rows["no_ista"]["ista/top_and_random/mean"] == ""  # absent, not zero
    for variant in rows:
        run_dir = workdir / "runs" / f"{variant}_seed0"
        for site in ("ista", "attn", "resid"):
            values = []
            for path in sorted((run_dir / "interp" / "scores" / site).glob("*/scores.jsonl")):
                for line in path.read_text().splitlines():
                    entry = json.loads(line)
                    if "random_only" not in entry["failures"] and \
                            entry["scores"]["random_only"] is not None:
                        values.append(entry["scores"]["random_only"])
            column = f"{site}/random_only/mean"
            if not values:
                assert rows[variant].get(column, "") == ""
                continue
            assert math.isclose(float(rows[variant][column]), sum(values) / len(values),
                                rel_tol=1e-9)
        last = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
                if json.loads(x)["split"] == "validation"][-1]
        assert math.isclose(float(rows[variant]["validation_loss/mean"]), last["loss"])
    assert rows["no_ista"]["attn/random_only/vs_crate/difference"] != ""
