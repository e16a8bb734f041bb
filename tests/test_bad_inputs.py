"""Every bad input to `python -m crate_jax.main` ends in one `FATAL:` line before any work.

The CLI runs as users run it (a subprocess, from the repository root unless the case is about the
working directory): the last line of stderr names the problem, no traceback is printed, and a
workdir that did not exist is not created.
"""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from run_helpers import REPO, read_only

from configs import ablation, crate
from crate_jax.input_checks import check_run_config
from crate_jax.model import ConfigError
from crate_jax.study import run_configs
from crate_jax.train.metrics import METRICS_FILENAME, MetricsWriter

VARIANTS = "crate, gpt2, ista_to_mlp, no_ista, standard_attention"


def _main(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "crate_jax.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _assert_one_fatal_line(result: subprocess.CompletedProcess, *named: str) -> str:
    """The run failed with one `FATAL:` line, the last of stderr, naming each of `named`."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("FATAL: "), result.stderr[-3000:]
    assert sum(line.startswith("FATAL") for line in lines) == 1, result.stderr
    for text in named:
        assert text in lines[-1], lines[-1]
    return lines[-1]


# --- the config file itself ---------------------------------------------------------------------

def _missing_file(tmp_path):
    return ["--config=configs/crat.py"], ["configs/crat.py", "crate.py"], REPO


def _syntax_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def get_config(:\n    return None\n")
    return [f"--config={path}"], [str(path), "SyntaxError", "line 1"], REPO


def _no_get_config(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text('"""A config file that forgot its get_config."""\n')
    return [f"--config={path}"], [str(path), "get_config"], REPO


def _absolute_path_from_elsewhere(tmp_path):
    # The config loads (its `from configs import crate` resolves), so the run reaches the next
    # check, which is what fails here.
    return ([f"--config={REPO / 'configs' / 'gpt2.py'}", "--config.stages=trian"],
            ["config.stages='trian'", "unknown stage"], tmp_path)


@pytest.mark.parametrize("case", [_missing_file, _syntax_error, _no_get_config,
                                  _absolute_path_from_elsewhere], ids=lambda case: case.__name__)
def test_config_file_problems_are_one_fatal_line(case, tmp_path):
    args, named, cwd = case(tmp_path)
    workdir = tmp_path / "run"
    _assert_one_fatal_line(_main(*args, f"--workdir={workdir}", cwd=cwd), *named)
    assert not workdir.exists()


# --- config values, checked before any data work ------------------------------------------------

@pytest.mark.parametrize("override, named", [
    ("train.grad_accum_steps=0", "train.grad_accum_steps=0"),
    ("train.batch_size=0", "train.batch_size=0"),
    ("train.num_steps=0", "train.num_steps=0"),
    ("data.val_fraction=1.0", "data.val_fraction=1.0"),
    ("interp.sites=mlp", "interp.sites"),  # crate has ista, attn and resid sites
    ("interp.explainer=llm", "interp.llm.model"),  # an llm explainer without a model
], ids=lambda value: value if "=" in value else "")
def test_bad_config_values_fail_before_any_work(override, named, tmp_path):
    workdir = tmp_path / "run"
    result = _main("--config=configs/crate.py:tiny", f"--workdir={workdir}",
                   f"--config.{override}")
    _assert_one_fatal_line(result, named)
    assert not workdir.exists()


@pytest.mark.parametrize("key, value", [
    ("train.num_steps", -5), ("train.batch_size", 0), ("train.grad_accum_steps", 0),
    ("train.seq_len", 0), ("train.eval_every", 0), ("train.log_every", -1),
    ("train.checkpoint_every", 0), ("train.eval_batches", 0), ("train.warmup_steps", -1),
    ("train.learning_rate", 0.0), ("train.min_learning_rate_ratio", 1.5), ("train.b2", 1.0),
    ("train.grad_clip", 0.0), ("train.keep_checkpoints", 0), ("data.val_fraction", 0.0),
    ("seed", -1), ("interp.num_sequences", 0), ("interp.seq_len", 0), ("interp.window", 0),
    ("interp.batch_size", 0), ("interp.top_k", -1), ("interp.workers", 0),
    ("interp.bootstrap_samples", 0), ("interp.eps", -1.0), ("interp.explainer", "gpt"),
    ("interp.llm.max_retries", -1), ("interp.llm.max_concurrency", 0),
    ("interp.llm.timeout_s", 0.0), ("interp.llm.simulator_mode", "chat"),
])
def test_each_config_value_is_checked_with_its_key_and_allowed_range(key, value):
    config = crate.get_config("tiny")
    config.interp.explainer = "llm"  # so that its settings are checked too
    config.interp.llm.model = "some-model"
    *sections, name = key.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[name] = value
    with pytest.raises(ConfigError, match=rf"^{key}={value!r}"):
        check_run_config(config, ("train", "interp"))


def test_layout_and_lengths_that_do_not_fit_are_config_errors():
    config = crate.get_config("tiny")
    config.train.update(batch_size=6, grad_accum_steps=4)
    with pytest.raises(ConfigError, match="not divisible by train.grad_accum_steps=4"):
        check_run_config(config, ("train",))
    config = crate.get_config("tiny")
    config.interp.seq_len = config.model.max_len + 1
    with pytest.raises(ConfigError, match="interp.seq_len=257 exceeds model.max_len=256"):
        check_run_config(config, ("train", "interp"))
    check_run_config(config, ("train",))  # interp settings matter only when interp runs


# --- the workdir --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["read_only", "a_file", "under_a_file"])
def test_a_workdir_that_cannot_hold_the_run_is_one_fatal_line(kind, tmp_path):
    with contextlib.ExitStack() as stack:
        if kind == "read_only":
            workdir = stack.enter_context(read_only(tmp_path / "run"))
        elif kind == "a_file":
            workdir = tmp_path / "run"
            workdir.write_text("not a directory")
        else:
            (tmp_path / "file").write_text("not a directory")
            workdir = tmp_path / "file" / "run"
        result = _main("--config=configs/crate.py:tiny", f"--workdir={workdir}",
                       "--config.stages=train")
        _assert_one_fatal_line(result, f"--workdir={workdir}")
        if kind == "read_only":
            assert list(workdir.iterdir()) == []


# --- a damaged metrics.jsonl --------------------------------------------------------------------

def test_a_damaged_middle_line_of_metrics_is_one_fatal_line_naming_it(tmp_path):
    workdir = tmp_path / "run"
    with MetricsWriter(workdir) as writer:
        for step in (10, 20, 30):
            writer.write(step, {"loss": 5.0 - step / 10})
    path = workdir / METRICS_FILENAME
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:25] + "\n"  # line 2 of 3: damaged some other way than a crash
    path.write_text("".join(lines))
    damaged = path.read_text()
    result = _main("--config=configs/crate.py:tiny", f"--workdir={workdir}",
                   "--config.stages=train")
    _assert_one_fatal_line(result, f"{path}:2", "repair")
    assert path.read_text() == damaged  # the records are the user's to repair, not dropped
    assert sorted(p.name for p in workdir.iterdir()) == [METRICS_FILENAME, "tensorboard"]


# --- study variants -----------------------------------------------------------------------------

@pytest.mark.parametrize("variant, elsewhere", [("__init__", False), ("ablation", True)])
def test_a_study_variant_that_is_no_variant_lists_the_variants(variant, elsewhere, tmp_path):
    workdir = tmp_path / "study"
    config = REPO / "configs" / "ablation.py" if elsewhere else "configs/ablation.py"
    result = _main(f"--config={config}", f"--workdir={workdir}",
                   f"--config.study.variants=crate,{variant}", cwd=tmp_path if elsewhere else REPO)
    _assert_one_fatal_line(result, f"study.variants names {variant!r}", VARIANTS)
    assert not workdir.exists()


def test_study_seeds_and_every_run_config_are_checked():
    config = ablation.get_config("tiny")
    config.study.seeds = "0,one"
    with pytest.raises(ConfigError, match="study.seeds"):
        run_configs(config)
    config = ablation.get_config("tiny")
    config.train.eval_every = 0
    with pytest.raises(ConfigError, match=r"^train.eval_every=0"):
        run_configs(config)

