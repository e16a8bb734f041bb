"""What `python -m crate_jax.main --help` tells a user: how to name a config, override it and pick
the stages, without `--helpfull`."""

import os
import subprocess
import sys

from run_helpers import REPO

from crate_jax.main import STAGES


def test_help_shows_the_config_flag_its_syntax_the_workdir_and_the_stages():
    result = subprocess.run([sys.executable, "-m", "crate_jax.main", "--help"], cwd=REPO,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                            text=True, timeout=120)
    shown = result.stdout + result.stderr
    assert "--config:" in shown and "--workdir:" in shown, shown
    assert "configs/crate.py:2l" in shown, "the size-preset syntax"
    assert "--config.train.num_steps=100" in shown, "an example override"
    assert "--config.stages=train,interp" in shown
    for stage in STAGES:
        assert f"\n  {stage} " in shown, f"stage {stage!r} is not described"


def test_the_command_line_imports_no_heavy_library_it_does_not_need_yet():
    """`--help`, a refused config and every FATAL line come before any stage runs, so the entry
    point leaves out what only one stage needs: torch (pulled in by tensorboardX where installed,
    ~1.6 s), scipy.stats (~0.7 s), tensorflow_datasets and matplotlib (~0.3 s each)."""
    heavy = ("torch", "tensorboardX", "scipy.stats", "tensorflow_datasets", "matplotlib")
    probe = f"import sys, crate_jax.main; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
