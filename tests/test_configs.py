"""Experiment configs: ablations change only their own keys; bad keys and sizes fail clearly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import crate, gpt2, ista_to_mlp, no_ista, standard_attention
from crate_jax.model import ConfigError, ModelConfig, model_from_config

REPO = Path(__file__).resolve().parents[1]
SIZES = ("tiny", "1l", "2l", "3l", "s", "b")

# Each config file and the only keys it may change relative to configs/crate.py.
ABLATIONS = {
    no_ista: {"model.sparse_block": "none"},
    standard_attention: {"model.attention": "mhsa"},
    ista_to_mlp: {"model.sparse_block": "mlp"},
    gpt2: {"model.attention": "mhsa", "model.sparse_block": "mlp", "model.use_bias": False},
}


def _flatten(config, prefix=""):
    flat = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("module", list(ABLATIONS), ids=lambda m: m.__name__.split(".")[-1])
def test_ablation_differs_from_crate_only_in_its_ablation_keys(module, size):
    base, ablated = _flatten(crate.get_config(size)), _flatten(module.get_config(size))
    assert set(base) == set(ablated), "an ablation must not add or drop keys"
    changed = {key: ablated[key] for key in base if base[key] != ablated[key]}
    variant = module.__name__.split(".")[-1]
    assert changed == {"variant": variant, **ABLATIONS[module]}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("module", [crate, *ABLATIONS], ids=lambda m: m.__name__.split(".")[-1])
def test_every_config_builds_a_valid_model(module, size):
    config = module.get_config(size)
    assert config.size == size
    settings = model_from_config(config).config
    assert settings.embed_dim == {"tiny": 128, "1l": 128, "2l": 128, "3l": 128,
                                  "s": 768, "b": 768}[size]
    if size != "tiny":
        assert (settings.vocab_size, settings.max_len) == (50304, 1024)


def test_default_size_is_tiny_and_an_unknown_size_names_the_choices():
    assert crate.get_config().size == "tiny"
    assert crate.get_config().model.vocab_size == 8192
    with pytest.raises(ValueError, match="unknown size preset 'xl'; choose one of tiny, 1l"):
        crate.get_config("xl")


def test_misspelt_model_key_is_an_error_with_a_suggestion():
    config = crate.get_config().to_dict()["model"]
    config["atention"] = config.pop("attention")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.atention' \(did you mean "
                                          r"'model.attention'\?\)"):
        ModelConfig.from_mapping(config)
    # A config file may add keys freely (it is unlocked there); building the model catches it.
    written_by_hand = crate.get_config()
    written_by_hand.model.ista_step = 3
    with pytest.raises(ConfigError, match="did you mean 'model.ista_steps'"):
        model_from_config(written_by_hand)


def _summary(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "crate_jax.summary", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_summary_cli_applies_command_line_overrides():
    result = _summary("--config=configs/gpt2.py:2l", "--config.model.num_layers=3")
    assert result.returncode == 0, result.stderr
    assert "variant     gpt2 (size 2l)" in result.stdout
    assert "layers=3" in result.stdout
    assert "7,029,632 (7.03M" in result.stdout  # the paper's GPT-2 3L count
    assert "mlp 3 x 512, attn 3 x 128, resid 3 x 128" in result.stdout


def test_summary_cli_names_a_misspelt_override_key():
    result = _summary("--config=configs/crate.py", "--config.model.atention=mhsa")
    assert result.returncode == 1
    assert ("FATAL: unknown config key 'model.atention' (did you mean 'model.attention'?)"
            in result.stderr)
    assert "Traceback" not in result.stderr


def test_summary_cli_rejects_an_invalid_value_and_an_unknown_size():
    result = _summary("--config=configs/crate.py", "--config.model.attention=mhssa")
    assert result.returncode == 1
    assert "model.attention='mhssa' is not one of mssa, mhsa" in result.stderr
    result = _summary("--config=configs/no_ista.py:xl")
    assert result.returncode == 1
    assert "unknown size preset 'xl'" in result.stderr


def test_unknown_interp_protocol_stops_the_run_with_one_fatal_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "crate_jax.main", "--config=configs/crate.py",
         "--config.stages=interp", "--config.interp.protocol=papr", f"--workdir={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert ("FATAL: interp.protocol='papr' is not one of default, paper"
            in result.stderr.splitlines())
    assert "Traceback" not in result.stderr
    assert crate.get_config().interp.protocol == "default"


def test_the_default_study_answers_a_and_b_and_full_adds_ista_to_mlp_and_the_saes():
    """The README's first command: CRATE, ablations A and B and GPT-2; `full` is the factorial
    with ISTA -> MLP and the SAE rows, on the same runs (same budget, data and evaluation)."""
    from configs import ablation

    default, full = ablation.get_config(), ablation.get_config("full")
    assert default.study.variants == "crate,no_ista,standard_attention,gpt2"
    assert not default.study.get("saes")
    assert full.study.variants == "crate,no_ista,standard_attention,gpt2,ista_to_mlp"
    assert dict(full.study.saes) == {"gpt2": "mlp,mlp_wide=mlp"}
    from crate_jax.study import run_configs

    default_runs, full_runs = run_configs(default), run_configs(full)
    assert set(default_runs) < set(full_runs)
    for name, run in default_runs.items():  # gpt2's runs: the same, less the SAE stage
        settings, in_full = run.to_dict(), full_runs[name].to_dict()
        if run.variant == "gpt2":
            assert in_full["stages"] == "train,sae,interp" and in_full["sae"]["sites"]
            for key in ("stages", "sae"):
                settings.pop(key), in_full.pop(key)
        assert settings == in_full, name
    for arg in ("stdlib,full", "aa,full"):
        with pytest.raises(ValueError, match="`full` is the planted corpus's"):
            ablation.get_config(arg)
