"""Sparse autoencoders (`crate_jax/sae/`): recovery of a known sparse dictionary, AuxK, the
decoder's unit rows, resumption, and splicing into the model."""

import contextlib
import io
import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_helpers import TRAINED_STEPS, interp_config

from crate_jax.model import LanguageModel, ModelConfig
from crate_jax.model.steering import splicing
from crate_jax.sae.evaluate import evaluate_site
from crate_jax.sae.model import SaeSettings, reconstruct
from crate_jax.sae.train import SaeState, initial_state, make_sae_step, sae_optimizer
from crate_jax.train.sharding import make_mesh

DIM, ATOMS, ACTIVE = 32, 64, 4


def _synthetic(seed: int, tokens: int, dictionary: np.ndarray) -> np.ndarray:
    """`tokens` k-sparse non-negative combinations of the dictionary's unit rows, plus noise."""
    rng = np.random.default_rng(seed)
    codes = np.zeros((tokens, dictionary.shape[0]), np.float32)
    chosen = np.argsort(rng.random(codes.shape), axis=1)[:, :ACTIVE]  # distinct atoms per row
    np.put_along_axis(codes, chosen, rng.uniform(0.5, 1.5, (tokens, ACTIVE)), axis=1)
    noise = rng.normal(0, 0.01, (tokens, dictionary.shape[1]))
    return (codes @ dictionary + noise).astype(np.float32)


@pytest.fixture(scope="module")
def dictionary():
    atoms = np.random.default_rng(0).normal(size=(ATOMS, DIM))
    return (atoms / np.linalg.norm(atoms, axis=1, keepdims=True)).astype(np.float32)


def _train(settings: SaeSettings, data_seed: int, dictionary, steps: int, learning_rate: float,
           state: SaeState | None = None) -> tuple[SaeState, dict]:
    optimizer = sae_optimizer(learning_rate)
    mesh = make_mesh({"data": -1, "fsdp": 1})
    step = make_sae_step(settings, optimizer, mesh)
    if state is None:
        sample = jnp.asarray(_synthetic(10_000 + data_seed, 2048, dictionary))[None]
        state = initial_state(jax.random.key(data_seed), sample, settings, optimizer)
    metrics = {}
    for index in range(steps):
        batch = _synthetic(data_seed * 100_000 + index, 256, dictionary)
        state, metrics = step(state, jnp.asarray(batch)[None])
    return state, jax.device_get(metrics)


def _recovery(state: SaeState, dictionary: np.ndarray) -> float:
    """Mean over the true atoms of their best cosine with a learned decoder row."""
    learned = np.asarray(state.params["decoder"][0])
    learned = learned / np.linalg.norm(learned, axis=1, keepdims=True)
    return float(np.mean(np.max(dictionary @ learned.T, axis=1)))


@pytest.mark.parametrize("settings", [
    SaeSettings(kind="topk", width=ATOMS, k=ACTIVE, aux_k=16, dead_after_tokens=2560),
    SaeSettings(kind="batchtopk", width=ATOMS, k=ACTIVE, aux_k=16, dead_after_tokens=2560),
    SaeSettings(kind="relu_l1", width=ATOMS, l1_coefficient=0.02),
], ids=["topk", "batchtopk", "relu_l1"])
def test_a_known_sparse_dictionary_is_recovered(settings, dictionary):
    state, metrics = _train(settings, 1, dictionary, steps=1500, learning_rate=3e-3)
    assert _recovery(state, dictionary) >= 0.9
    assert float(metrics["fvu"][0]) < 0.15
    norms = np.linalg.norm(np.asarray(state.params["decoder"][0]), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)  # renormalised every step
    if settings.kind == "batchtopk":
        assert float(state.threshold[0]) > 0  # its inference threshold was learned


def test_without_its_penalty_a_relu_sae_reconstructs_but_finds_no_dictionary(dictionary):
    """The recovery measure is not met by reconstruction alone: ReLU latents without the L1
    penalty reconstruct better than any SAE above, densely, with other directions."""
    settings = SaeSettings(kind="relu_l1", width=ATOMS, l1_coefficient=0.0)
    state, metrics = _train(settings, 1, dictionary, steps=1500, learning_rate=3e-3)
    assert float(metrics["fvu"][0]) < 0.01 and float(metrics["l0"][0]) > 4 * ACTIVE
    assert _recovery(state, dictionary) < 0.7


def test_aux_k_revives_latents_dead_at_initialisation(dictionary):
    """Half the latents start with encoder columns too small ever to reach the top k: dead
    after 10 batches. With AuxK they come back; without it they stay dead."""
    def run(aux_k: int) -> float:
        settings = SaeSettings(kind="topk", width=ATOMS, k=ACTIVE, aux_k=aux_k,
                               dead_after_tokens=2560)
        optimizer = sae_optimizer(3e-3)
        sample = jnp.asarray(_synthetic(7, 2048, dictionary))[None]
        state = initial_state(jax.random.key(2), sample, settings, optimizer)
        encoder = state.params["encoder"].at[:, :, ATOMS // 2:].multiply(1e-3)
        state = state.replace(params={**state.params, "encoder": encoder})
        state, metrics = _train(settings, 2, dictionary, steps=600, learning_rate=3e-3,
                                state=state)
        return float(metrics["dead_fraction"][0])

    without, with_aux = run(aux_k=0), run(aux_k=16)
    assert without >= 0.4
    assert with_aux <= without / 2


def _tiny_config(prepared):
    config = interp_config(prepared, {})
    config.sae.update(dict(sites="ista", expansion=1, k=8, num_steps=6, batch_size=2,
                           seq_len=32, log_every=3, checkpoint_every=3, eval_sequences=4))
    return config


def test_a_resumed_sae_training_equals_an_uninterrupted_one(trained, prepared, tmp_path):
    """Killed after step 3's checkpoint (step 6's and the evaluation never written), the rerun
    resumes there and ends where the uninterrupted training ended."""
    from crate_jax.layout import RunLayout
    from crate_jax.sae.stage import fit_saes

    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    shutil.copytree(trained, straight)
    config = _tiny_config(prepared)
    with contextlib.redirect_stdout(io.StringIO()):
        fit_saes(config, straight)
    shutil.copytree(straight, crashed)
    layout = RunLayout(crashed).sae("ista")
    shutil.rmtree(layout.checkpoints / "6")
    layout.evaluation.unlink()
    with contextlib.redirect_stdout(io.StringIO()) as output:
        fit_saes(config, crashed)
    assert "moved" not in output.getvalue() and "step 6" in output.getvalue()
    assert "step 3 |" not in output.getvalue()  # resumed after step 3, not from the start
    first = json.loads(RunLayout(straight).sae("ista").evaluation.read_text())
    second = json.loads(layout.evaluation.read_text())
    assert first["layers"] == second["layers"]
    assert first["layers"]["0"]["l0"] > 0
    config.sae.eval_sequences = 2  # the evaluation alone is redone, from the last checkpoint
    with contextlib.redirect_stdout(io.StringIO()) as output:
        fit_saes(config, crashed)
    assert "moved" not in output.getvalue() and "| FVU" not in output.getvalue()  # no training
    assert json.loads(layout.evaluation.read_text())["layers"]["0"]["tokens"] == 2 * 32
    records = [[{key: value for key, value in json.loads(line).items() if key != "time"}
                for line in RunLayout(w).sae("ista").metrics.read_text().splitlines()]
               for w in (straight, crashed)]
    assert records[0] == records[1] and len(records[0]) == 2


def test_sae_outputs_of_another_model_are_moved_aside(trained, prepared, tmp_path):
    from crate_jax.layout import RunLayout
    from crate_jax.sae.stage import fit_saes
    from crate_jax.train.loop import train_and_evaluate

    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    config = _tiny_config(prepared)
    with contextlib.redirect_stdout(io.StringIO()):
        fit_saes(config, workdir)
        longer = interp_config(prepared, {}, num_steps=TRAINED_STEPS + 2)
        train_and_evaluate(longer, workdir)
        config.train.num_steps = TRAINED_STEPS + 2
    with contextlib.redirect_stdout(io.StringIO()) as output:
        fit_saes(config, workdir)
    assert "moved ista/ to ista.stale-1/" in output.getvalue()
    assert (workdir / "sae" / "ista.stale-1" / "evaluation.json").exists()
    assert json.loads(RunLayout(workdir).sae("ista").evaluation.read_text())[
        "checkpoint_step"] == TRAINED_STEPS + 2


def test_splicing_the_identity_changes_no_loss():
    """An SAE that reconstructs exactly (ReLU latents, identity encoder and decoder, on the
    non-negative MLP hidden layer), or the identity function itself, spliced in: the same loss
    to float precision."""
    settings_model = ModelConfig(vocab_size=64, max_len=16, num_layers=2, embed_dim=16,
                                 num_heads=2, attention="mhsa", sparse_block="mlp")
    model = LanguageModel(settings_model)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    windows = np.random.default_rng(0).integers(0, 64, (4, 9)).astype(np.int32)
    width = 4 * 16
    sae = SaeSettings(kind="relu_l1", width=width)
    identity = {"b_pre": jnp.zeros(width), "encoder": jnp.eye(width),
                "b_enc": jnp.zeros(width), "decoder": jnp.eye(width)}
    state = SaeState(step=jnp.zeros((), jnp.int32),
                     params=jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), identity),
                     opt_state=None, tokens_since_fired=jnp.zeros((2, width), jnp.int32),
                     threshold=jnp.zeros(2), scale=jnp.ones(2))
    result = evaluate_site(model, params, state, sae, "mlp", windows, batch_size=2)
    for layer in ("0", "1"):
        assert abs(result[layer]["loss_spliced"] - result[layer]["loss_clean"]) < 1e-6
        assert result[layer]["fvu"] < 1e-10
        assert result[layer]["loss_mean_ablated"] != result[layer]["loss_clean"]

    @jax.jit
    def losses(p, w):
        plain = model.apply({"params": p}, w)
        with splicing({("mlp", 1): lambda x: x, ("resid", 0): lambda x: x}):
            same = model.apply({"params": p}, w)
        with splicing({("mlp", 1): lambda x: reconstruct(identity, jnp.ones(()), jnp.zeros(()),
                                                         x, sae)}):
            spliced = model.apply({"params": p}, w)
        return plain, same, spliced

    plain, same, spliced = losses(params, windows)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(same))
    np.testing.assert_allclose(np.asarray(plain), np.asarray(spliced), atol=1e-6)


SMALL_INTERP = dict(sites="ista,sae_ista", num_sequences=16, seq_len=64, window=16, top_k=8,
                    random_k=8, quantile_bins=2, per_bin=2, neurons_per_layer=6,
                    bootstrap_samples=50)


def test_sae_latents_are_scored_like_neurons_and_tie_interp_to_the_sae(trained, prepared,
                                                                       tmp_path):
    from crate_jax.interp.activations.capture import InterpretabilityError
    from crate_jax.interp.evaluate import evaluate_interpretability
    from crate_jax.sae.stage import fit_saes

    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    config = _tiny_config(prepared)
    # Two SAEs on one site (`NAME=SITE`), the second with settings of its own.
    config.sae.sites = "ista,ista_wide=ista"
    config.sae.per_site = {"ista_wide": dict(expansion=2, k=3)}
    config.interp.update({**SMALL_INTERP, "sites": "ista,sae_ista,sae_ista_wide"})
    with pytest.raises(InterpretabilityError, match="run the 'sae' stage first"):
        evaluate_interpretability(config, workdir)
    with contextlib.redirect_stdout(io.StringIO()):
        fit_saes(config, workdir)
        summary = evaluate_interpretability(config, workdir)
    sae_layers = summary["sites"]["sae_ista"]
    assert set(sae_layers) == {"0", "1"} and set(summary["sites"]["sae_ista_wide"]) == {"0", "1"}
    evaluations = {name: json.loads((workdir / "sae" / name / "evaluation.json").read_text())
                   for name in ("ista", "ista_wide")}
    assert {name: (e["site"], e["settings"]["width"], e["settings"]["k"])
            for name, e in evaluations.items()} == {"ista": ("ista", 512, 8),
                                                    "ista_wide": ("ista", 1024, 3)}
    wide_inputs = json.loads((workdir / "sae" / "ista_wide" / "inputs.json").read_text())
    assert wide_inputs["sae"]["k"] == 3 and wide_inputs["sae"]["expansion"] == 2
    records = (workdir / "interp" / "records" / "sae_ista" / "layer_0.jsonl").read_text()
    assert len(records.splitlines()) == 6
    scores = (workdir / "interp" / "scores" / "sae_ista" / "layer_0" / "scores.jsonl")
    assert len(scores.read_text().splitlines()) == 6
    sparsity = json.loads((workdir / "interp" / "sparsity.json").read_text())
    assert sparsity["sae_ista"]["0"]["mean_l0"] <= config.sae.k + 1e-9
    assert sparsity["sae_ista_wide"]["0"]["num_neurons"] == 1024
    assert sparsity["sae_ista_wide"]["0"]["mean_l0"] <= 3 + 1e-9
    report = (workdir / "interp" / "report.md").read_text()
    assert "| sae_ista | 1 | topk | 512 | 8 |" in report  # its SAEs beside their scores

    # Other SAEs (another k): trained afresh, and the interp outputs that read the old ones
    # are moved aside, not reused.
    config.sae.k = 4
    with contextlib.redirect_stdout(io.StringIO()) as output:
        fit_saes(config, workdir)
        evaluate_interpretability(config, workdir)
    assert "moved ista/ to ista.stale-1/" in output.getvalue()
    assert "ista_wide.stale" not in output.getvalue()  # its own k: its inputs are unchanged
    assert "inputs changed (saes.ista" in output.getvalue()
    sparsity = json.loads((workdir / "interp" / "sparsity.json").read_text())
    assert sparsity["sae_ista"]["0"]["mean_l0"] <= 4 + 1e-9


@pytest.mark.parametrize("key, value, named", [
    ("sae.sites", "mlp", "sae.sites='mlp' names mlp, which this model does not have"),
    ("sae.kind", "gated", "sae.kind='gated' is not one of topk, batchtopk, relu_l1"),
    ("sae.k", 600, "sae.k=600 exceeds the 512 latents of the ista SAE"),
    ("sae.num_steps", 0, "sae.num_steps=0 is out of range"),
    ("sae.seq_len", 1000, "sae.seq_len=1000 exceeds model.max_len=256"),
])
def test_sae_settings_are_refused_before_any_work(key, value, named):
    from configs import crate
    from crate_jax.input_checks import check_run_config
    from crate_jax.model import ConfigError

    config = crate.get_config("tiny")
    config.sae.update(dict(sites="ista", expansion=1))
    config.sae[key.split(".")[1]] = value
    with pytest.raises(ConfigError, match=re.escape(named)):
        check_run_config(config, ("train", "sae", "interp"))


def test_interp_refuses_an_sae_site_no_sae_stage_fits():
    from configs import crate
    from crate_jax.input_checks import check_run_config
    from crate_jax.interp.activations.capture import InterpretabilityError

    config = crate.get_config("tiny")
    config.interp.sites = "sae_ista"
    with pytest.raises(InterpretabilityError, match="asks for sae_ista"):
        check_run_config(config, ("train", "interp"))
    config.sae.sites = "ista"
    check_run_config(config, ("train", "sae", "interp"))


@pytest.mark.parametrize("sites, per_site, named", [
    ("ista,ista=ista", {}, "sae.sites names 'ista' twice"),
    ("ista,wide=mlp", {}, "names mlp, which this model does not have"),
    ("ista", {"wide": dict(k=3)}, "sae.per_site names wide, which sae.sites does not fit"),
    ("ista", {"ista": dict(num_steps=3)}, "sae.per_site.ista sets num_steps; an SAE may set "
                                          "only"),
    ("ista,wide=ista", {"wide": dict(k=2000)}, "sae.per_site.wide.k=2000 exceeds the 512 "
                                               "latents of the wide SAE"),
    ("ista,wide=ista", {"wide": dict(kind="gated")}, "sae.per_site.wide.kind='gated'"),
    ("ista,wide=ista", {"wide": dict(expansion=0)}, "sae.per_site.wide.expansion=0 is out of "
                                                    "range"),
])
def test_named_sae_settings_are_refused_before_any_work(sites, per_site, named):
    from configs import crate
    from crate_jax.input_checks import check_run_config
    from crate_jax.model import ConfigError

    config = crate.get_config("tiny")
    config.sae.update(dict(sites=sites, expansion=1))
    config.sae.per_site = per_site
    with pytest.raises(ConfigError, match=re.escape(named)):
        check_run_config(config, ("train", "sae", "interp"))
