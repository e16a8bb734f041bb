"""Every bad input to `python -m crate_jax.main` ends in one `FATAL:` line before any work.

What only the CLI process shows runs as users run it (a subprocess): a config file that does not
load, a misspelt override, an absolute config path from another directory, and the `FATAL:` line
itself (the last of stderr, exit code 1, no traceback). Everything else is checked in process,
where it is decided: `check_before_any_work` raises one of the errors that `main` prints as that
line, and a workdir that did not exist is not created.
"""

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from run_helpers import REPO, raises_user_error, read_only

from configs import ablation, crate
from crate_jax.data.tokenizer import TokenizerError
from crate_jax.input_checks import WorkdirError, check_run_config
from crate_jax.interp.activations.capture import InterpretabilityError
from crate_jax.layout import METRICS_FILENAME
from crate_jax.main import check_before_any_work, stage_names
from crate_jax.metrics_file import MetricsError
from crate_jax.model import ConfigError
from crate_jax.study import run_configs
from crate_jax.train.metrics import MetricsWriter

VARIANTS = "crate, gpt2, ista_to_mlp, no_ista, standard_attention"


def _main(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "crate_jax.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _assert_one_fatal_line(result: subprocess.CompletedProcess, *named: str) -> str:
    """The run failed with one `FATAL:` line, the last of stderr, naming each of `named`."""
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("FATAL: "), result.stderr[-3000:]
    assert sum(line.startswith("FATAL") for line in lines) == 1, result.stderr
    for text in named:
        assert text in lines[-1], lines[-1]
    return lines[-1]


def _check(config, workdir: Path, stages: str | None = None) -> None:
    """What `main` does before any stage runs."""
    check_before_any_work(config, str(workdir), stage_names(stages or config.stages))


# --- what only the command line shows -------------------------------------------------------

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


def _misspelt_override(tmp_path):
    return (["--config=configs/crate.py:tiny", "--config.train.num_stepz=3"],
            ["unknown config key 'train.num_stepz' (did you mean 'train.num_steps'?)"], REPO)


def _study_from_elsewhere(tmp_path):
    # The study's config and its variants' (`from configs import crate`) load from another
    # directory; the run then reaches `check_before_any_work`, whose error `main` prints.
    return ([f"--config={REPO / 'configs' / 'ablation.py'}",
             "--config.study.variants=crate,ablation"],
            ["study.variants names 'ablation'", VARIANTS], tmp_path)


def _not_utf8(tmp_path):
    # A byte that is no UTF-8 (the argument as Python holds it: a surrogate escape) was accepted,
    # trained and scored, then failed writing interp/report.md, on every rerun.
    return (["--config=configs/crate.py:tiny", "--config.variant=\udcff"],
            ["--config.variant=\\xff", "not UTF-8"], REPO)


@pytest.mark.parametrize("case", [_missing_file, _syntax_error, _no_get_config,
                                  _misspelt_override, _study_from_elsewhere, _not_utf8],
                         ids=lambda case: case.__name__)
def test_command_line_problems_are_one_fatal_line(case, tmp_path):
    args, named, cwd = case(tmp_path)
    workdir = tmp_path / "run"
    _assert_one_fatal_line(_main(*args, f"--workdir={workdir}", cwd=cwd), *named)
    assert not workdir.exists()


# --- config values, checked before any data work ------------------------------------------------

BAD_VALUES = [
    ("train.grad_accum_steps", 0, ConfigError, "train.grad_accum_steps=0"),
    ("train.batch_size", 0, ConfigError, "train.batch_size=0"),
    ("train.num_steps", 0, ConfigError, "train.num_steps=0"),
    ("data.val_fraction", 1.0, ConfigError, "data.val_fraction=1.0"),
    # crate has ista, attn and resid sites
    ("interp.sites", "mlp", InterpretabilityError, "interp.sites asks for mlp"),
    ("interp.explainer", "llm", ConfigError, "interp.llm.model"),  # an llm without a model
    # the truth control needs the planted corpus (configs/crate.py reads stdlib)
    ("interp.compared_explainers", "ngram,truth", ConfigError, "'truth' is the planted"),
    ("stages", "trian", ConfigError, "config.stages='trian': unknown stage"),
    # was refused only after training the tokenizer
    ("model.vocab_size", 10, TokenizerError, "model.vocab_size=10 is below the 257 tokens"),
    ("data.tokenizer", "sentencepiece", TokenizerError, "data.tokenizer='sentencepiece'"),
]


@pytest.mark.parametrize("key, value, error, named", BAD_VALUES,
                         ids=[f"{key}={value}" for key, value, *_ in BAD_VALUES])
def test_bad_config_values_fail_before_any_work(key, value, error, named, tmp_path):
    config = crate.get_config("tiny")
    *sections, name = key.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[name] = value
    workdir = tmp_path / "run"
    with raises_user_error(error, re.escape(named)):
        _check(config, workdir)
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
    ("interp.compared_explainers", "gpt"), ("interp.ngram_patterns", 0),
    ("interp.ngram_context", 0),
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
        with raises_user_error(WorkdirError, re.escape(f"--workdir={workdir}")):
            _check(crate.get_config("tiny"), workdir, "train")
        if kind == "read_only":
            assert list(workdir.iterdir()) == []


def test_an_object_store_url_is_refused_rather_than_made_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with raises_user_error(WorkdirError, "gs:// URLs are not supported as a workdir; mount"):
        _check(crate.get_config("tiny"), "gs://bucket/run", "train")
    assert list(tmp_path.iterdir()) == []  # no ./gs:/bucket/run


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
    before = sorted(p.name for p in workdir.iterdir())
    with raises_user_error(MetricsError, rf"{re.escape(str(path))}:2.*repair"):
        _check(crate.get_config("tiny"), workdir, "train")
    assert path.read_text() == damaged  # the records are the user's to repair, not dropped
    assert sorted(p.name for p in workdir.iterdir()) == before


# --- study variants -----------------------------------------------------------------------------

def test_a_study_variant_that_is_no_variant_lists_the_variants(tmp_path):
    """From another directory too: `_study_from_elsewhere` above."""
    config = ablation.get_config()
    config.study.variants = "crate,__init__"
    workdir = tmp_path / "study"
    with raises_user_error(ConfigError, re.escape("study.variants names '__init__'")) as raised:
        _check(config, workdir)
    assert VARIANTS in str(raised.value)
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

