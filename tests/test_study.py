"""The ablation study stage: validation before training, and resuming without retraining."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_helpers import REPO, miniature_study, with_data, workdir_with_data

from configs import ablation
from crate_jax.model import ConfigError
from crate_jax.study import run_configs, run_study
from crate_jax.train.checkpoints import Checkpointer


def _study(prepared, **study):
    """A miniature natural-text study on the session's prepared stdlib tokens."""
    return miniature_study(with_data(ablation.get_config("stdlib"), prepared), **study)


def test_every_run_shares_the_study_settings_and_keeps_its_ablation_keys(prepared):
    config = _study(prepared)
    config.mesh.data = 1  # the variants' own default is -1
    runs = run_configs(config)
    assert all(run.mesh.data == 1 for run in runs.values())  # the device layout is the study's
    assert len(runs) == 15
    assert runs["no_ista_seed1"].model.sparse_block == "none"
    assert runs["standard_attention_seed2"].model.attention == "mhsa"
    assert runs["gpt2_seed0"].model.use_bias is False
    assert {run.seed for run in runs.values()} == {0, 1, 2}
    assert all(run.train.num_steps == 10 and run.interp.neurons_per_layer == 8
               for run in runs.values())


def test_the_study_chooses_every_runs_kernels_and_the_readme_studies_keep_theirs(prepared):
    """The README's studies were computed with XLA's attention and whole logits; `auto` on a CPU
    now differs from them in float rounding, so their config keeps them, for every variant."""
    for arg in ("", "stdlib", "aa", "full"):
        runs = run_configs(ablation.get_config(arg or None))
        assert {(run.model.attention_impl, run.model.head_impl)
                for run in runs.values()} == {("xla", "logits")}, arg
    config = _study(prepared)
    config.model.attention_impl, config.model.head_impl = "blockwise", "chunked"
    assert {(run.model.attention_impl, run.model.head_impl)
            for run in run_configs(config).values()} == {("blockwise", "chunked")}


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
    """A finished 2-variant, 2-seed study (two runs: the least a t interval over runs needs):
    (its config, its workdir)."""
    workdir = workdir_with_data(prepared, tmp_path_factory.mktemp("study"), "study")
    config = _study(prepared, variants="crate,no_ista", seeds="0,1")
    manifest = run_study(config, workdir)
    assert set(manifest["runs"]) == {f"{v}_seed{s}" for v in ("crate", "no_ista") for s in (0, 1)}
    return config, workdir


def test_miniature_study_writes_every_report_file(miniature):
    _, workdir = miniature
    _check_report_against_run_files(workdir)


def test_each_untrained_control_is_its_runs_initialisation_evaluated_the_same_way(miniature):
    """The control's checkpoint is step 0 and holds exactly the parameters the run started
    from (the training code's own initialisation from the run's seed), and its interp stage ran
    with the run's interp settings: its inputs differ from the run's only in the checkpoint."""
    import json

    import jax
    import ml_collections
    import numpy as np
    from run_helpers import checkpoint_params

    from crate_jax.model import model_from_config
    from crate_jax.train.optimizer import make_optimizer
    from crate_jax.train.state import initial_state

    config, workdir = miniature
    manifest = json.loads((workdir / "study.json").read_text())
    assert set(manifest["controls"]) == set(manifest["runs"])
    run_dir, control_dir = workdir / "runs" / "crate_seed0", workdir / "controls" / "crate_seed0"
    assert sorted(p.name for p in (control_dir / "checkpoints").iterdir()) == ["0"]
    run = json.loads((run_dir / "config.json").read_text())
    assert json.loads((control_dir / "config.json").read_text()) == run
    run_config = ml_collections.ConfigDict(run)
    model = model_from_config(run_config)
    start = jax.jit(lambda: initial_state(model, make_optimizer(run_config.train),
                                          run["seed"]))().params
    saved = checkpoint_params(control_dir, 0)
    trained = checkpoint_params(run_dir, config.train.num_steps)
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(start),
                                 jax.tree_util.tree_leaves(saved), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want),
                                      err_msg=jax.tree_util.keystr(path))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(trained),
                   strict=True))  # the run itself did train
    from crate_jax.train.loop import TrainingError, save_initial_state

    with pytest.raises(TrainingError, match="checkpoint at step 10: not an untrained model"):
        save_initial_state(run_config, run_dir)  # a trained run is never passed off as one
    inputs = [json.loads((d / "interp" / "inputs.json").read_text())
              for d in (run_dir, control_dir)]
    assert inputs[1]["checkpoint_step"] == 0 and inputs[0]["checkpoint_step"] == 10
    assert inputs[1]["params_sha256"] != inputs[0]["params_sha256"]
    for key in ("interp", "model", "tokenizer_fingerprint", "data_fingerprint"):
        assert inputs[1][key] == inputs[0][key], key


def _neuron_scores(run_dir, site, split="top_and_random"):
    """`{(layer, neuron): score}` read straight from a run's scores.jsonl files."""
    import json

    scores = {}
    for path in sorted((run_dir / "interp" / "scores" / site).glob("layer_*/scores.jsonl")):
        layer = int(path.parent.name.removeprefix("layer_"))
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if split not in entry["failures"]:
                scores[(layer, entry["neuron"])] = entry["scores"][split]
    return scores


def _paired_gains(workdir, variant, site):
    """Per run: (mean over neurons finite in the run and its control of trained - untrained,
    neurons left out), recomputed here from the files."""
    import math

    gains = []
    for seed in (0, 1):
        trained = _neuron_scores(workdir / "runs" / f"{variant}_seed{seed}", site)
        control = _neuron_scores(workdir / "controls" / f"{variant}_seed{seed}", site)
        assert set(trained) == set(control)  # the control scores the same neuron ids
        pairs = [(trained[k], control[k]) for k in trained
                 if trained[k] is not None and control[k] is not None
                 and math.isfinite(trained[k]) and math.isfinite(control[k])]
        gains.append((sum(t - c for t, c in pairs) / len(pairs), len(trained) - len(pairs)))
    return gains


def test_the_report_puts_every_score_beside_its_controls(miniature):
    """Untrained score, the paired gain over it (per run, the mean over neurons of the trained
    minus the same neuron's untrained score; then over runs) and the token reference per
    variant and site, in the JSON, the Markdown, the page and the figures' data; the ablations
    are also compared on their gains, over runs."""
    import json
    import math

    from scipy import stats

    _, workdir = miniature
    report = json.loads((workdir / "report" / "ablation.json").read_text())
    rows = {row["variant"]: row for row in report["variants"]}
    for variant, site in (("crate", "ista"), ("crate", "attn"), ("no_ista", "resid")):
        row = rows[variant]
        untrained = row[f"{site}/top_and_random/untrained"]
        gain = row[f"{site}/top_and_random/gain"]
        assert untrained["neurons"] == row[f"{site}/top_and_random"]["neurons"] > 0
        assert untrained["n"] == gain["n"] == 2  # runs
        expected = _paired_gains(workdir, variant, site)
        assert math.isclose(gain["mean"], sum(g for g, _ in expected) / 2)
        assert gain["unpaired"] == sum(left for _, left in expected)
        assert gain["ci_low"] <= gain["mean"] <= gain["ci_high"]
        assert f"{site}/top_and_random/other_neuron" in row
        reference = row[f"{site}/top_and_random/token_reference"]
        assert reference["n"] == 2 and -1 <= reference["mean"] <= 1
    gains = [c for c in report["answer"]["comparisons"] if c["site"] == "attn"][0]
    theirs, ours = (_paired_gains(workdir, v, "attn") for v in ("crate", "no_ista"))
    welch = stats.ttest_ind([g for g, _ in ours], [g for g, _ in theirs], equal_var=False)
    assert math.isclose(gains["top_and_random_gain"]["p_value"], welch.pvalue)
    assert math.isclose(gains["top_and_random_gain"]["difference"],
                        rows["no_ista"]["attn/top_and_random/gain"]["mean"]
                        - rows["crate"]["attn/top_and_random/gain"]["mean"])
    markdown = (workdir / "report" / "ablation.md").read_text()
    assert "## Controls" in markdown and "| crate | ista |" in markdown
    assert "top-and-random gain vs CRATE" in markdown
    assert 'id="controls-table"' in (workdir / "report" / "index.html").read_text()


def test_a_copy_of_a_config_runs_under_its_own_name_and_seeds(prepared):
    """`NAME=CONFIG` compares a config with itself (the A/A check): the copy is the same model
    under other seeds, and the same seeds (the very same runs) are refused before any work."""
    config = _study(prepared, variants="crate,crate_copy=crate", seeds="0,1")
    config.study.variant_seeds = {"crate_copy": "5,6"}
    runs = run_configs(config)
    assert list(runs) == ["crate_seed0", "crate_seed1", "crate_copy_seed5", "crate_copy_seed6"]
    assert runs["crate_copy_seed5"].variant == "crate_copy"
    assert runs["crate_copy_seed5"].model.to_dict() == runs["crate_seed0"].model.to_dict()
    aa = ablation.get_config("aa")
    assert (aa.study.variants, aa.study.variant_seeds.crate_copy) == ("crate,crate_copy=crate",
                                                                       "5,6,7,8,9")
    for variants, seeds, message in (
            ("crate,crate_copy=crate", {}, r"would be the same runs; give one other seeds"),
            ("crate,crate", {}, "names 'crate' twice"),
            ("crate,copy=crate=gpt2", {}, "neither a config name nor NAME=CONFIG"),
            ("crate,no_ista", {"gpt2": "3"}, "study.variant_seeds names gpt2")):
        config = _study(prepared, variants=variants, seeds="0,1")
        config.study.variant_seeds = seeds
        with pytest.raises(ConfigError, match=message):
            run_configs(config)


def test_study_controls_must_be_a_boolean(prepared, tmp_path):
    """A study config file of one's own may spell it as text (the default's is typed)."""
    import ml_collections

    config = _study(prepared, variants="crate", seeds="0")
    config.study = ml_collections.ConfigDict({**config.study.to_dict(), "controls": "yes"})
    with pytest.raises(ConfigError, match="study.controls='yes' must be True or False"):
        run_study(config, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def _finished_work(run_dir):
    """What a rerun must leave alone once it is written: the run's training curve and the
    explanations and scores of every neuron, each with its bytes and modification time."""
    paths = [run_dir / "metrics.jsonl",
             *sorted((run_dir / "interp" / "scores").glob("*/layer_*/*.jsonl"))]
    return {path.relative_to(run_dir): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in paths}


def test_an_interrupted_study_finishes_without_retraining_finished_runs(miniature):
    """As if killed while scoring no_ista: the rerun redoes only that run's missing work."""
    config, workdir = miniature
    crate, no_ista = workdir / "runs" / "crate_seed0", workdir / "runs" / "no_ista_seed0"
    finished = _finished_work(crate)
    trained = _finished_work(no_ista)
    scored = {path: content for path, (content, _) in trained.items()
              if path.parts[0] == "interp"}
    assert Path("metrics.jsonl") in finished and Path("metrics.jsonl") in trained
    assert {path.name for path in scored} == {"explanations.jsonl", "scores.jsonl"}
    shutil.rmtree(no_ista / "interp" / "scores")
    (no_ista / "interp" / "summary.json").unlink()
    run_study(config, workdir)
    assert _finished_work(crate) == finished
    redone = _finished_work(no_ista)
    assert redone[Path("metrics.jsonl")] == trained[Path("metrics.jsonl")]  # not retrained
    assert {path: content for path, (content, _) in redone.items()
            if path.parts[0] == "interp"} == scored  # rescored, as before
    assert (no_ista / "interp" / "summary.json").exists()


def test_rerunning_a_finished_study_retrains_nothing(miniature):
    config, workdir = miniature
    runs = [workdir / "runs" / name for name in ("crate_seed0", "no_ista_seed0")]
    finished = {run_dir: _finished_work(run_dir) for run_dir in runs}
    run_study(config, workdir)  # finished runs are skipped, their files untouched
    for run_dir in runs:
        assert _finished_work(run_dir) == finished[run_dir], run_dir.name


# What a run's files record of the machine's clock, not of its computation.
_TIMINGS = {"time", "tokens_per_second", "seconds_per_step", "seconds_this_run"}


def _computed_files(run_dir: Path) -> dict:
    """Every file a run (or control) computed, timings left out: what workers must not change.
    (Checkpoints hold write times; their parameters are in the metrics and scores.)"""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if not path.is_file() or relative.parts[0] in ("checkpoints", "tensorboard", ".lock"):
            continue
        if path.name == "metrics.jsonl":
            files[relative] = [_untimed(json.loads(line))
                               for line in path.read_text().splitlines()]
        elif path.name == "summary.json":
            files[relative] = _untimed(json.loads(path.read_text()))
        else:
            files[relative] = path.read_bytes()
    return files


def _untimed(value):
    if isinstance(value, dict):
        return {key: _untimed(item) for key, item in value.items() if key not in _TIMINGS}
    return [_untimed(item) for item in value] if isinstance(value, list) else value


def test_workers_write_the_very_files_of_the_study_process(miniature, prepared, tmp_path):
    """Two runs at a time, each with its control in a worker process: every file they compute
    is the one the study's own process computed (`miniature`, `study.workers=1`)."""
    _, alone = miniature
    workdir = workdir_with_data(prepared, tmp_path, "study")
    manifest = run_study(_study(prepared, variants="crate,no_ista", seeds="0", workers=2),
                         workdir)
    assert manifest["workers"] == 2
    names = ["crate_seed0", "no_ista_seed0"]
    assert list(manifest["runs"]) == names and list(manifest["controls"]) == names
    assert sorted(path.stem for path in (workdir / "logs").glob("*.log")) == names
    for kind in ("runs", "controls"):
        for name in names:
            computed = _computed_files(workdir / kind / name)
            assert any(path.parts[0] == "interp" for path in computed)
            assert computed == _computed_files(alone / kind / name), f"{kind}/{name}"


def test_a_signal_to_a_study_with_workers_lets_each_save_and_the_rerun_finishes(prepared,
                                                                               tmp_path):
    """SIGTERM to `python -m crate_jax.main` while its workers train: each worker saves a
    checkpoint and stops, the study ends as interrupted, and the same command finishes it."""
    workdir = workdir_with_data(prepared, tmp_path, "study")
    command = [sys.executable, "-m", "crate_jax.main", "--config=configs/ablation.py:stdlib",
               f"--workdir={workdir}", f"--config.data.data_dir={prepared / 'tfds'}",
               "--config.study.variants=crate,no_ista", "--config.study.seeds=0",
               "--config.study.workers=2", "--config.study.controls=False",
               "--config.train.num_steps=100",
               "--config.train.batch_size=8", "--config.train.seq_len=64",
               "--config.train.log_every=5", "--config.train.eval_every=100",
               "--config.train.checkpoint_every=100", "--config.train.progress_bar=False",
               "--config.interp.num_sequences=8", "--config.interp.neurons_per_layer=4",
               "--config.interp.seq_len=64"]
    environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
    study = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    logs = [workdir / "logs" / f"{name}.log" for name in ("crate_seed0", "no_ista_seed0")]
    deadline = time.monotonic() + 240
    while not all(log.exists() and "step 10 |" in log.read_text() for log in logs):
        assert study.poll() is None and time.monotonic() < deadline, study.communicate()[0]
        time.sleep(0.2)
    study.send_signal(signal.SIGTERM)
    output = study.communicate(timeout=120)[0]
    assert study.returncode == 128 + signal.SIGTERM, output
    assert "study: interrupted" in output, output
    for log in logs:
        assert "stopped by signal at step" in log.read_text(), log.read_text()[-2000:]
    saved = [Checkpointer(workdir / "runs" / name / "checkpoints", save_every=100).latest_step()
             for name in ("crate_seed0", "no_ista_seed0")]
    assert all(step is not None and 10 <= step < 100 for step in saved), saved
    assert not (workdir / "study.json").exists()
    finished = subprocess.run(command, cwd=REPO, env=environment, capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    manifest = json.loads((workdir / "study.json").read_text())
    assert set(manifest["runs"]) == {"crate_seed0", "no_ista_seed0"}
    for log in logs:  # each resumed from its checkpoint, not started over
        resumed = log.read_text().split("stopped by signal")[-1]
        assert "step 0 |" not in resumed and "step 100 | validation loss" in resumed, resumed


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
        run_dirs = [workdir / "runs" / f"{variant}_seed{seed}" for seed in (0, 1)]
        for site in ("ista", "attn", "resid"):
            run_means = []  # the run is the unit: each run's mean over its neurons
            for run_dir in run_dirs:
                values = [v for v in _neuron_scores(run_dir, site, "random_only").values()
                          if v is not None]
                if values:
                    run_means.append(sum(values) / len(values))
            column = f"{site}/random_only/mean"
            if not run_means:
                assert rows[variant].get(column, "") == ""
                continue
            assert math.isclose(float(rows[variant][column]), sum(run_means) / len(run_means),
                                rel_tol=1e-9)
            assert rows[variant][f"{site}/random_only/n"] == "2"
        losses = [[json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
                   if json.loads(x)["split"] == "validation"][-1]["loss"] for run_dir in run_dirs]
        assert math.isclose(float(rows[variant]["validation_loss/mean"]), sum(losses) / 2)
    assert rows["no_ista"]["attn/random_only/vs_crate/p_value"] != ""


# -- the report's findings, on copies of the miniature with hand-written files of the documented
#    schemas (references.json from the train stage, ground_truth.json from a planted corpus) --


def _copy_study(workdir, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    return copy


def _final_loss(run_dir):
    import json

    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(x)["split"] == "validation"][-1]["loss"]


def _write_json(path, value):
    import json

    path.write_text(json.dumps(value))


def _rebuild_report(workdir, figures=False):
    from crate_jax.report.ablation_table import build_table, write_table
    from crate_jax.report.page import write_page
    from crate_jax.report.plots import write_plots

    rows = build_table(workdir)
    write_table(rows, workdir / "report")
    write_page(rows, workdir, workdir / "report",
               write_plots(workdir, workdir / "report") if figures else [])
    return rows


def _markdown_row(markdown, variant):
    """The variant's row of the wide table (`## All variants`)."""
    wide = markdown[markdown.index("## All variants"):]
    return next(line for line in wide.splitlines() if line.startswith(f"| {variant} |"))


def test_runs_that_do_not_beat_the_bigram_reference_are_flagged(miniature, tmp_path):
    import csv
    import json

    _, original = miniature
    workdir = _copy_study(original, tmp_path)
    runs = {f"{v}_seed{s}": workdir / "runs" / f"{v}_seed{s}"
            for v in ("crate", "no_ista") for s in (0, 1)}
    for run_dir in runs.values():  # as an older run: no references.json
        (run_dir / "references.json").unlink(missing_ok=True)
    _rebuild_report(workdir)
    markdown = (workdir / "report" / "ablation.md").read_text()
    for variant in ("crate", "no_ista"):  # no references: n/a, and no flag
        assert "| n/a | n/a | n/a | n/a |" in _markdown_row(markdown, variant)
    assert "undertrained" not in markdown.split("## All variants")[0]
    assert 'id="undertrained"' not in (workdir / "report" / "index.html").read_text()

    # crate_seed0 does not beat its bigram reference; every other run does.
    bigrams = {name: _final_loss(run_dir) + (-0.5 if name == "crate_seed0" else 0.5)
               for name, run_dir in runs.items()}
    crate = (bigrams["crate_seed0"] + bigrams["crate_seed1"]) / 2  # the row shows the mean
    no_ista = (bigrams["no_ista_seed0"] + bigrams["no_ista_seed1"]) / 2
    for name, run_dir in runs.items():
        bigram = bigrams[name]
        _write_json(run_dir / "references.json",
                    {"unigram": bigram + 1.0, "bigram": bigram, "floor": None,
                     "floor_source": None, "tokens": 1000, "seq_len": 64, "windows": 4})
    _rebuild_report(workdir)
    markdown = (workdir / "report" / "ablation.md").read_text()
    assert f"| {crate:.3f} | n/a | **undertrained** (crate_seed0) |" in \
        _markdown_row(markdown, "crate")
    assert f"| {no_ista:.3f} | n/a | beats bigram |" in _markdown_row(markdown, "no_ista")
    assert "Ablation A (no_ista vs crate): no conclusion, crate_seed0 does not beat the bigram " \
           "reference loss (undertrained)." in markdown
    rows = {r["variant"]: r for r in csv.DictReader(open(workdir / "report" / "ablation.csv"))}
    assert rows["crate"]["undertrained"] == "True" and rows["no_ista"]["undertrained"] == "False"
    assert float(rows["no_ista"]["references/bigram"]) == pytest.approx(no_ista)
    answer = json.loads((workdir / "report" / "ablation.json").read_text())["answer"]
    assert "no conclusion" in answer["sentences"][0]
    page = (workdir / "report" / "index.html").read_text()
    warning = page.split('id="undertrained">')[1].split("</p>")[0]
    assert "crate_seed0" in warning and "no_ista_seed0" not in warning
    assert "<strong>undertrained</strong> (crate_seed0)" in page


def test_ground_truth_recovery_is_tabulated_and_compared_where_present(miniature, tmp_path):
    """Recovery over a site's layers (a feature counts if a neuron of any layer detects it),
    selectivity pooled over judged neurons, each beside the untrained control's, and the
    neurons too few firing to judge, in the CSV, the wide table and the README's truth block."""
    import csv

    from crate_jax.report.readme import truth_table

    _, original = miniature
    columns = next(csv.reader(open(original / "report" / "ablation.csv")))
    assert not any("recovery" in c for c in columns)  # no ground truth: absent, never zero

    workdir = _copy_study(original, tmp_path)

    def layer(aurocs, selectivity, judged, too_few, spearman, n):
        return {"recovery": sum(a >= 0.9 for a in aurocs.values()) / len(aurocs),
                "mean_selectivity": selectivity, "judged_neurons": judged,
                "too_few_firing": too_few,
                "features": {name: {"best_neuron": 3, "auroc": a} for name, a in aurocs.items()},
                "score_vs_truth": {"spearman": spearman, "n": n}}

    # crate's attn detects `digit` in layer 0 only; no_ista's `digit` in layer 0 and `letter`
    # in layer 1: recovery 0.5 and 1.0 over layers (the per-layer means were 0.25 and 0.5).
    attn = {"crate_seed0": ({"digit": 0.95, "letter": 0.5}, {"digit": 0.6, "letter": 0.5}),
            "no_ista_seed0": ({"digit": 0.95, "letter": 0.4}, {"digit": 0.3, "letter": 0.91})}
    for name, (first, second) in attn.items():
        sites = {"attn": {"0": layer(first, 0.2, 10, 2, 0.2, 4),
                          "1": layer(second, 0.5, 30, 0, 0.6, 12)},
                 "resid": {"0": layer(first, 0.1, 8, 0, 0.1, 8),
                           "1": layer(first, 0.1, 8, 0, 0.1, 8)}}
        _write_json(workdir / "runs" / name / "interp" / "ground_truth.json",
                    {"features": ["digit", "letter"], "tokens": 512, "recovery_auroc": 0.9,
                     "sites": sites})
    untrained = {"attn": {str(i): layer({"digit": 0.6, "letter": 0.5}, 0.05, 40, 0, 0.0, 4)
                          for i in range(2)}}
    _write_json(workdir / "controls" / "crate_seed0" / "interp" / "ground_truth.json",
                {"features": ["digit", "letter"], "tokens": 512, "sites": untrained})
    rows = _rebuild_report(workdir)
    flat = {r["variant"]: r for r in csv.DictReader(open(workdir / "report" / "ablation.csv"))}
    assert float(flat["crate"]["attn/recovery/mean"]) == pytest.approx(0.5)
    assert float(flat["crate"]["attn/mean_selectivity/mean"]) == pytest.approx(
        (0.2 * 10 + 0.5 * 30) / 40)
    assert float(flat["crate"]["attn/recovery/untrained/mean"]) == pytest.approx(0.0)
    assert float(flat["crate"]["attn/mean_selectivity/untrained/mean"]) == pytest.approx(0.05)
    assert flat["no_ista"].get("attn/recovery/untrained/mean", "") == ""  # no control truth
    assert int(flat["crate"]["attn/too_few_firing"]) == 2
    assert float(flat["crate"]["attn/spearman/mean"]) == pytest.approx(0.5)  # n-weighted
    assert float(flat["no_ista"]["attn/recovery/vs_crate/difference"]) == pytest.approx(0.5)
    assert flat["crate"].get("ista/recovery/mean", "") == ""  # ista: no ground truth here
    markdown = (workdir / "report" / "ablation.md").read_text()
    answer = markdown.split("## All variants")[0]
    assert "| recovery vs CRATE |" in answer and "no_ista − crate" in answer
    assert "0.500" in next(line for line in answer.splitlines() if "| attn |" in line)
    for header in ("attn recovery (any layer)", "attn recovery (any layer) untrained",
                   "attn selectivity", "attn selectivity untrained", "attn score vs truth ρ"):
        assert f"| {header} |" in markdown, header
    block = truth_table(rows)
    assert "| recovery (any layer) | untrained | selectivity | untrained | too few firing |" \
        in block
    crate_attn = next(line for line in block.splitlines() if line.startswith("| crate | attn |"))
    assert "| 2/" in crate_attn and "0.050" in crate_attn
    assert "correlation with selectivity" in block


def test_neurons_left_out_are_counted_in_the_table_and_page(miniature):
    import json

    _, workdir = miniature
    markdown = (workdir / "report" / "ablation.md").read_text()
    page = (workdir / "report" / "index.html").read_text()
    for variant in ("crate", "no_ista"):
        run_dirs = [workdir / "runs" / f"{variant}_seed{seed}" for seed in (0, 1)]
        entries = [json.loads(line) for run_dir in run_dirs for path in
                   sorted((run_dir / "interp" / "scores" / "attn").glob("*/scores.jsonl"))
                   for line in path.read_text().splitlines()]
        left_out = sum(e["scores"]["random_only"] is None or "random_only" in e["failures"]
                       for e in entries)
        sparsity = [layer for run_dir in run_dirs for layer in json.loads(
            (run_dir / "interp" / "sparsity.json").read_text())["attn"].values()]
        dead = sum(layer["dead_neurons"] for layer in sparsity)
        total = sum(layer["num_neurons"] for layer in sparsity)
        cell = f"r-o {left_out}/{len(entries)}"
        assert cell in _markdown_row(markdown, variant)
        assert f"dead {dead}/{total}" in _markdown_row(markdown, variant)
        assert cell in page


def test_figures_keep_one_colour_per_variant_and_legends_off_the_data(miniature, tmp_path):
    from crate_jax.report.plots import scores_by_layer_figure, validation_loss_figure

    _, original = miniature
    workdir = _copy_study(original, tmp_path)
    # CRATE second: the ista panel then has CRATE alone, where a restarted colour cycle would
    # give it no_ista's colour.
    runs = {variant: [workdir / "runs" / f"{variant}_seed0"] for variant in ("no_ista", "crate")}
    controls = {variant: [workdir / "controls" / f"{variant}_seed0"] for variant in runs}
    figure = scores_by_layer_figure(runs, "top_and_random", controls)
    colours = {}
    for axis in figure.axes:
        assert axis.get_legend() is None
        for container in axis.containers:
            colours.setdefault(container.get_label(), set()).add(
                container.lines[0].get_color())
    assert set(colours) == {"crate", "no_ista"}
    assert len(colours["crate"]) == 1 and len(colours["no_ista"]) == 1
    assert colours["crate"] != colours["no_ista"]
    figure.canvas.draw()
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["no_ista", "crate",
                                                          "untrained control", "token reference"]
    # The controls' markers (open circles, crosses) take their variant's colour.
    markers = {(line.get_marker(), line.get_color()) for axis in figure.axes
               for line in axis.lines if line.get_marker() == "x"
               or line.get_markerfacecolor() == "none"}
    assert {colour for _, colour in markers} == colours["crate"] | colours["no_ista"]
    assert {marker for marker, _ in markers} == {"o", "x"}
    box = legend.get_window_extent()
    assert not any(box.overlaps(axis.get_window_extent()) for axis in figure.axes)

    bigram = _final_loss(runs["crate"][0]) - 0.3
    for run_dirs in runs.values():
        _write_json(run_dirs[0] / "references.json",
                    {"unigram": bigram + 1.0, "bigram": bigram, "floor": None,
                     "floor_source": None, "tokens": 1000, "seq_len": 64, "windows": 4})
    figure = validation_loss_figure(runs)
    horizontal = [line.get_ydata()[0] for line in figure.axes[0].lines
                  if len(set(line.get_ydata())) == 1 and len(line.get_ydata()) == 2]
    assert horizontal == pytest.approx([bigram + 1.0, bigram])
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert f"bigram reference {bigram:.2f}" in labels and "crate" in labels


def test_neuron_viewer_picks_best_and_worst_among_firing_neurons(miniature, tmp_path):
    import json
    import re

    import numpy as np

    _, original = miniature
    workdir = _copy_study(original, tmp_path)
    run_dir = workdir / "runs" / "crate_seed0"
    scores = [json.loads(line) for line in
              (run_dir / "interp" / "scores" / "ista" / "layer_1" / "scores.jsonl")
              .read_text().splitlines()]
    best = max((e for e in scores if e["scores"]["top_and_random"] is not None),
               key=lambda e: (e["scores"]["top_and_random"], -e["neuron"]))["neuron"]
    # Make the best-scored neuron a dead one that twitches once (as a document boundary would).
    path = run_dir / "interp" / "records" / "ista" / "layer_1_statistics.npz"
    with np.load(path) as data:
        arrays = {name: data[name].copy() for name in data.files}
    position = list(arrays["neuron_index"]).index(best)
    arrays["max"][position] = 1e-4 * max(arrays["max"].max(), 1e-3)
    arrays["firing_frequency"][position] = 1 / arrays["count"][position]
    with open(path, "wb") as file:
        np.savez(file, **arrays)
    _rebuild_report(workdir)
    page = (workdir / "report" / "index.html").read_text()
    chosen = re.findall(r"(best|worst) explained \(of \d+ firing, scored\): crate · ista layer 1 "
                        r"· neuron (\d+)", page)
    assert [kind for kind, _ in chosen] == ["best", "worst"]
    assert str(best) not in [neuron for _, neuron in chosen]
    assert "<b>Activation scale:</b> (10) = activation" in page
    assert "fires (&gt; 0) on" in page


def test_score_cache_keeps_no_simulations(miniature):
    from crate_jax.report.run_files import score_entries

    _, workdir = miniature
    path = next((workdir / "runs" / "crate_seed0" / "interp" / "scores").glob(
        "*/layer_*/scores.jsonl"))
    assert "simulations" in path.read_text()
    kept = {"neuron", "scores", "failures", "token_reference_scores", "baseline_scores"}
    assert all({"neuron", "scores", "failures"} <= set(entry) <= kept
               for entry in score_entries(path))


def test_readme_study_blocks_are_regenerated_from_the_study(miniature, tmp_path):
    import json
    import sys

    from crate_jax.report.answer import answer_sentences
    from crate_jax.report.text import interval_text

    _, workdir = miniature
    readme = tmp_path / "README.md"
    original = (REPO / "README.md").read_text()
    readme.write_text(original)
    command = [sys.executable, "-m", "crate_jax.report.readme", f"--workdir={workdir}",
               f"--readme={readme}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = readme.read_text()
    outside = re.compile(r"<!-- study:(\w+):begin -->.*?<!-- study:\1:end -->", re.DOTALL)
    assert outside.sub("", text) == outside.sub("", original)  # nothing else changed
    blocks = dict(re.findall(r"<!-- study:(\w+):begin -->\n(.*?)\n<!-- study:\1:end -->", text,
                             re.DOTALL))
    assert {"facts", "answer", "table", "floor", "truth"} <= set(blocks)
    stdlib_block = re.compile(r"<!-- study:stdlib:begin -->.*?<!-- study:stdlib:end -->",
                              re.DOTALL)
    assert stdlib_block.findall(text) == stdlib_block.findall(original)  # not this study's block
    assert blocks["floor"] == "(no planted corpus: no floor)"  # natural text has no floor
    assert blocks["truth"] == "(no planted corpus: no ground truth)"
    assert "2 variants x 2 seeds (seeds 0,1)" in blocks["facts"]
    assert "10 steps of 8 x 64" in blocks["facts"]
    rows = json.loads((workdir / "report" / "ablation.json").read_text())["variants"]
    table = [line for line in blocks["table"].splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0] for line in table] == ["| crate", "| no_ista"]
    for line, row in zip(table, rows, strict=True):
        assert interval_text(row["validation_loss"]) in line
        assert interval_text(row["attn/random_only"]) in line
    assert "Ablation A (no_ista vs crate):" in blocks["answer"]
    assert re.search(r"\| A: no_ista − crate( \(undertrained\))? \| attn \|", blocks["answer"])
    subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    assert readme.read_text() == text  # regenerating is idempotent

    # A second study summarised in a block of its own, the rest untouched.
    subprocess.run([*command, "--as_block=stdlib"], capture_output=True, text=True,
                   timeout=300, check=True)
    summary = re.search(r"<!-- study:stdlib:begin -->\n(.*?)\n<!-- study:stdlib:end -->",
                        readme.read_text(), re.DOTALL).group(1)
    assert summary.startswith("Study: 2 variants x 2 seeds") and "| crate |" in summary
    assert summary.endswith(answer_sentences(rows)[-1].split()[-1])  # its answer's sentences
    assert "Ablation A (no_ista vs crate):" in summary
    assert outside.sub("", readme.read_text()) == outside.sub("", original)
    readme.write_text(text)

    readme.write_text("# a README without the study's markers\n")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "<!-- study:facts:begin -->" in done.stderr


def _sae_study(config, **study):
    """A miniature study whose gpt2 runs get the full factorial's SAEs, at a budget of seconds."""
    config = miniature_study(config, **study)
    config.sae.update(dict(num_steps=6, batch_size=2, seq_len=32, log_every=3,
                           checkpoint_every=3, eval_sequences=2))
    return config


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The full factorial's config (the planted corpus, its SAEs on gpt2) at a budget of
    seconds, with CRATE, ablation B and GPT-2, one seed each, two at a time as a study on a CPU
    runs them (gpt2's SAEs wait for crate's measured L0): its workdir."""
    config = ablation.get_config("full")
    assert config.data.source == "planted" and config.model.vocab_size == 128
    config.data.source = "planted:300"
    workdir = tmp_path_factory.mktemp("planted")
    run_study(_sae_study(config, variants="crate,standard_attention,gpt2", seeds="0",
                         workers=2), workdir)
    return workdir


def test_planted_study_reports_the_floor_gap_and_ground_truth_from_its_runs(planted):
    """The default corpus end to end: every run writes references and ground truth, and the
    report's floor-gap table and recovery columns are the runs' own numbers."""
    import json

    tmp_path = planted
    names = ("crate_seed0", "standard_attention_seed0")
    truths = {name: json.loads((tmp_path / "runs" / name / "interp" / "ground_truth.json")
                               .read_text()) for name in names}
    rows = {row["variant"]: row for row in
            json.loads((tmp_path / "report" / "ablation.json").read_text())["variants"]}
    for name, truth in truths.items():
        row = rows[name.removesuffix("_seed0")]
        assert row["floor_gap"]["excess"] == pytest.approx(truth["loss_above_floor"]["excess"])
        assert row["references"]["floor"] is not None
        assert row["undertrained"] is True  # 10 steps do not beat the bigram reference
        best = {}  # recovery over layers: a feature counts if a neuron of any layer has it
        for entry in truth["sites"]["ista"].values():
            for feature, found in entry["features"].items():
                best[feature] = max(best.get(feature, 0.0), found["auroc"])
        recovered = sum(auroc >= truth["recovery_auroc"] for auroc in best.values())
        assert row["ista/recovery"]["mean"] == pytest.approx(recovered / len(best))
        assert row["ista/too_few_firing"] == sum(
            entry["too_few_firing"] for entry in truth["sites"]["ista"].values())
    markdown = (tmp_path / "report" / "ablation.md").read_text()
    assert "## Loss above the entropy floor" in markdown
    assert f"| crate | {truths['crate_seed0']['loss_above_floor']['model_loss']:.3f} |" in markdown
    assert "Loss above the entropy floor" in (tmp_path / "report" / "index.html").read_text()
    from crate_jax.report.readme import study_blocks
    blocks = study_blocks(tmp_path)
    references = json.loads((tmp_path / "runs" / "crate_seed0" / "references.json").read_text())
    assert references["floor_in_window"] > references["floor"] > 0  # its harder targets
    assert (f"{references['floor_in_window']:.3f} on the {references['in_window_fraction']:.0%} "
            "of targets whose document starts in their window") in " ".join(blocks["facts"].split())
    truth = blocks["truth"]
    assert truth.splitlines()[2].startswith("| crate | ista | ")
    assert re.search(r"Of \d+ \(variant, site\) pairs, the explanation score", truth)
    # The study's own untrained controls stand beside the trained numbers.
    assert "ista/recovery/untrained" in rows["crate"]
    assert "ista/mean_selectivity/untrained" in rows["crate"]
    _check_validity(tmp_path, truths["crate_seed0"], markdown, blocks["validity"])


def _check_validity(workdir, truth, markdown, block):
    """Each measure's correlation with the truth, recomputed from the run's own files: the
    compared explainer's scores.jsonl and ground_truth.json's per-neuron selectivity."""
    import json

    from scipy import stats

    validity = json.loads((workdir / "report" / "ablation.json").read_text())["validity"]
    pairs = []
    for layer, entry in truth["sites"]["ista"].items():
        path = (workdir / "runs" / "crate_seed0" / "interp" / "explainers" / "ngram" / "ista"
                / f"layer_{layer}" / "scores.jsonl")
        for line in path.read_text().splitlines():
            score = json.loads(line)["scores"]["fuzzing"]
            selectivity = entry["neurons"]["selectivity"][json.loads(line)["neuron"]]
            if score is not None and selectivity is not None:
                pairs.append((score, selectivity))
    expected = stats.spearmanr(*zip(*pairs, strict=True))[0]
    (entry,) = [e for e in validity["entries"] if (e["explainer"], e["score"], e["measure"],
                e["variant"], e["site"]) == ("ngram", "fuzzing", "selectivity", "crate", "ista")]
    assert entry["trained"]["mean"] == pytest.approx(expected) and entry["neurons"] == len(pairs)
    assert entry["untrained"] is not None  # the controls are checked against the truth too
    explainers = {e["explainer"] for e in validity["entries"]}
    assert explainers == {"token_lookup", "ngram", "truth"}
    assert validity["best"]["explainer"] != "truth"  # a control, never the chosen measure
    # One Holm family over every measure's comparisons (here all undertrained: no p_holm at
    # all, so nothing is concluded on any measure).
    comparisons = [c for answer in validity["answers"] for c in answer["comparisons"]]
    assert {a["explainer"] for a in validity["answers"]} == {"token_lookup", "ngram"}
    assert comparisons and not any("p_holm" in c for c in comparisons)
    assert markdown.index("## Which measure tracks the truth") < markdown.index("## Answer")
    assert "Best-tracking measure: **" in block and "| ngram fuzzing |" in block


# -- one report pipeline, with the settings the study saved; the study from an installed copy --


def _report_files(workdir):
    return {path.name: path.read_bytes() for path in sorted((workdir / "report").iterdir())}


def _report_command(workdir):
    """`python -m crate_jax.report` on `workdir`, from another directory; returns its stdout."""
    import sys

    done = subprocess.run([sys.executable, "-m", "crate_jax.report", f"--workdir={workdir}"],
                          capture_output=True, text=True, timeout=300, cwd=workdir.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_report_command_rebuilds_the_studys_own_report(miniature, tmp_path):
    """The report's statistics are over runs and draw nothing at random: the command rebuilds
    every file byte for byte."""
    import json

    _, original = miniature
    workdir = _copy_study(original, tmp_path)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["study"]["variants"] == "crate,no_ista"
    study_report = _report_files(workdir)
    shutil.rmtree(workdir / "report")
    _report_command(workdir)
    assert _report_files(workdir) == study_report


def test_an_installed_copy_finds_the_study_variants_from_any_directory(tmp_path):
    """`pip install` of the repository (as in Colab) ships `configs`, so a study's variants
    (`configs.<variant>`) import without the repository on the path."""
    import os
    import sys

    source, site, elsewhere = tmp_path / "source", tmp_path / "site", tmp_path / "elsewhere"
    for name in ("crate_jax", "configs"):
        shutil.copytree(REPO / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                              "--disable-pip-version-check", f"--target={site}", str(source)],
                             capture_output=True, text=True, timeout=300)
    if install.returncode and "No matching distribution found for setuptools" in install.stderr:
        pytest.skip("pip cannot fetch the build backend (setuptools) here: offline")
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere.mkdir()
    script = ("import configs, crate_jax\n"
              "from configs import ablation\n"
              "from crate_jax.study import model_variants, run_configs\n"
              "config = ablation.get_config('stdlib')\n"
              "config.study.update(variants='crate,no_ista', seeds='0')\n"
              "print(configs.__file__, crate_jax.__file__)\n"
              "print(','.join(model_variants('tiny')))\n"
              "print(','.join(run_configs(config)))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=elsewhere, env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr[-2000:]
    files, variants, runs = done.stdout.splitlines()[-3:]
    assert all(path.startswith(str(site)) for path in files.split())  # the installed copy
    assert variants == "crate,gpt2,ista_to_mlp,no_ista,standard_attention"
    assert runs == "crate_seed0,no_ista_seed0"


def test_study_saes_are_checked_before_any_training(tmp_path):
    config = _sae_study(ablation.get_config("full"), variants="crate,gpt2")
    assert dict(config.study.saes) == {"gpt2": "mlp,mlp_wide=mlp"}
    config.study.saes = {"gtp2": "mlp"}
    with pytest.raises(ConfigError, match="study.saes names gtp2, which is no variant"):
        run_study(config, tmp_path / "a")
    config.study.saes = {"gpt2": "mlp,mlp_wide=mlp"}
    config.study.variants = "crate,no_ista"  # a study without gpt2 fits no SAE
    assert all(not run.sae.sites for run in run_configs(config).values())
    config.study.saes = {"gpt2": "mlp,mlp_wide=mlp"}
    config.study.variants = "gpt2,crate"
    with pytest.raises(ConfigError, match="list crate first in study.variants"):
        run_study(config, tmp_path / "b")
    config.study.variants = "crate,gpt2"
    config.study.saes = {"gpt2": "mlp,mlp_wide=mlp", "crate": "ista"}
    with pytest.raises(ConfigError, match="crate cannot have SAEs of its own"):
        run_study(config, tmp_path / "b")
    config.study.saes = {"gpt2": "mlp,mlp_wide=mlp"}
    config.study.sae_k_from = "crate/mlp"
    with pytest.raises(ConfigError, match="crate has no mlp site"):
        run_study(config, tmp_path / "c")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_planted_study_fits_saes_on_gpt2_and_compares_them_with_crates_ista(planted):
    """The default study's SAE rows, end to end: k is CRATE's measured ISTA L0, the SAE as wide
    as the ISTA code is compared with it over runs, every SAE is fitted on the untrained
    controls too, and the table, page, figure and README block show them."""
    import json

    from crate_jax.report.readme import study_blocks
    from crate_jax.statistics import run_difference, run_mean

    tmp_path = planted
    runs = {name: tmp_path / "runs" / name for name in ("crate_seed0", "gpt2_seed0")}
    ista = [json.loads((runs["crate_seed0"] / "interp" / "sparsity.json").read_text())["ista"]]
    l0 = [layer["mean_l0"] for run in ista for layer in run.values()]
    k = round(sum(l0) / len(l0))
    manifest = json.loads((tmp_path / "study.json").read_text())
    assert manifest["sae_k"] == {"from": "crate/ista", "mean_l0": pytest.approx(sum(l0) / len(l0)),
                                 "k": k}
    width = ista[0]["0"]["num_neurons"]
    for directory in [runs["gpt2_seed0"], tmp_path / "controls" / "gpt2_seed0"]:
        evaluations = {name: json.loads((directory / "sae" / name / "evaluation.json")
                                        .read_text()) for name in ("mlp", "mlp_wide")}
        assert {name: (e["settings"]["width"], e["settings"]["k"])
                for name, e in evaluations.items()} == {"mlp": (width, k),
                                                        "mlp_wide": (4 * width, k)}
    assert not (runs["crate_seed0"] / "sae").exists()

    report = json.loads((tmp_path / "report" / "ablation.json").read_text())
    gpt2 = next(row for row in report["variants"] if row["variant"] == "gpt2")
    assert gpt2["sae_mlp/vs_crate_site"] == "ista"
    assert "sae_mlp_wide/vs_crate_site" not in gpt2  # 4x as wide: no like-for-like comparison
    ours = run_mean(list(_neuron_scores(runs["gpt2_seed0"], "sae_mlp").values()))
    theirs = run_mean(list(_neuron_scores(runs["crate_seed0"], "ista").values()))
    expected = run_difference([ours], [theirs])  # one run a side: a difference, no test
    assert gpt2["sae_mlp/top_and_random/vs_crate"]["difference"] == pytest.approx(
        expected["difference"])
    evaluation = json.loads((runs["gpt2_seed0"] / "sae" / "mlp" / "evaluation.json").read_text())
    fvu = [layer["fvu"] for layer in evaluation["layers"].values()]
    assert gpt2["sae_mlp/sae/fvu"]["mean"] == pytest.approx(sum(fvu) / len(fvu))
    assert "sae_mlp/sae/fvu/untrained" in gpt2
    comparisons = [c for c in report["answer"]["comparisons"] if c["ablation"] == "SAE"]
    assert [(c["variant"], c["site"], c["crate_site"]) for c in comparisons] == [
        ("gpt2", "sae_mlp", "ista")]
    assert any(s.startswith("SAE vs CRATE's own sparse code (gpt2's sae_mlp")
               for s in report["answer"]["sentences"])

    markdown = (tmp_path / "report" / "ablation.md").read_text()
    assert "## SAEs" in markdown  # 10 steps: undertrained, so the row says so
    assert "| SAE: gpt2 − crate (undertrained) | sae_mlp vs ista |" in markdown
    assert f"| gpt2 | sae_mlp_wide (topk on mlp) | {4 * width} | {k} |" in markdown
    assert "| crate | ista (the model's neurons) |" in markdown
    assert (tmp_path / "report" / "sae_fvu_vs_l0.png").stat().st_size > 0
    assert 'id="sae-table"' in (tmp_path / "report" / "index.html").read_text()
    blocks = study_blocks(tmp_path)
    assert "sae_mlp_wide (topk on mlp)" in blocks["sae"]
    assert f"k = {k}, the mean L0 of crate/ista" in " ".join(blocks["facts"].split())
