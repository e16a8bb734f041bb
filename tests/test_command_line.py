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
