"""FSDP over the `data` x `fsdp` mesh: the sharding rules, the mesh settings' checks, training on
8 forced host devices equal to one device, and resumption onto another mesh shape.

Equal means: per-step train losses and validation losses within a relative 1e-5, parameters
within rtol 1e-5 / atol 1e-6 (float32; sums are reduced in another order across devices).
"""

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P
from run_helpers import THREE_STEPS, checkpoint_params, tiny_config, train_three_steps

from configs import crate, gpt2
from crate_jax.input_checks import check_run_config
from crate_jax.metrics_file import read_metrics
from crate_jax.model import ConfigError, model_from_config
from crate_jax.train.config_checks import check_mesh
from crate_jax.train.optimizer import make_optimizer
from crate_jax.train.sharding import FSDP_AXIS, MIN_SHARDED_ELEMENTS, mesh_shape, partition_spec
from crate_jax.train.state import abstract_train_state

VARIANTS = {"crate": crate, "gpt2": gpt2}
# A (128, 512) matrix of each variant's tiny model: split 8 ways along its 512 columns.
LARGE_MATRIX = {"crate": ("layer_0", "ista", "dictionary"),
                "gpt2": ("layer_0", "mlp", "hidden", "kernel")}
STEPS = THREE_STEPS


# --- the rules ----------------------------------------------------------------------------------

def _specs(module, fsdp_size: int) -> dict[str, P]:
    config = tiny_config(module)
    abstract = abstract_train_state(model_from_config(config), make_optimizer(config.train))
    return {jax.tree_util.keystr(path): partition_spec(tuple(leaf.shape), fsdp_size)
            for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}


def test_large_leaves_are_split_over_fsdp_along_their_largest_divisible_dimension():
    specs = _specs(crate, fsdp_size=8)
    layer = ".params['layer_0']"
    assert specs[f"{layer}['ista']['dictionary']"] == P(None, FSDP_AXIS)  # (128, 512)
    assert specs[".params['token_embedding']['embedding']"] == P(FSDP_AXIS, None)  # (8192, 128)
    assert specs[f"{layer}['attention']['subspace']['kernel']"] == P(FSDP_AXIS, None, None)
    assert specs[f"{layer}['attention']['out']['kernel']"] == P(None, None, FSDP_AXIS)
    for small in (f"{layer}['ista_norm']['scale']", f"{layer}['attention']['out']['bias']",
                  ".params['final_norm']['bias']", ".step", ".dropout_key",
                  ".opt_state[1][0].count"):
        assert specs[small] == P(), small
    # Adam's moments have their parameter's shape, hence its sharding.
    params = {path[len(".params"):]: spec for path, spec in specs.items()
              if path.startswith(".params")}
    for moment in ("mu", "nu"):
        assert {name: specs[f".opt_state[1][0].{moment}{name}"] for name in params} == params
    # The largest dimension the axis divides; none that it divides, or too small: replicated.
    assert partition_spec((1001, 24), 8) == P(None, FSDP_AXIS)
    assert partition_spec((1001, 17), 8) == P()
    assert partition_spec((256, 256), 8) == P(FSDP_AXIS, None)
    assert partition_spec((8, MIN_SHARDED_ELEMENTS // 8 - 8), 8) == P()
    # fsdp=1 is data parallelism: the whole state on every device.
    assert set(_specs(gpt2, fsdp_size=1).values()) == {P()}


# --- the mesh settings --------------------------------------------------------------------------

def test_mesh_settings_resolve_minus_one_and_must_lay_out_every_device():
    assert mesh_shape({"data": -1, "fsdp": 1}, 8) == (8, 1)
    assert mesh_shape({"data": -1, "fsdp": 8}, 8) == (1, 8)
    assert mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4)
    assert mesh_shape({"data": 2, "fsdp": 4}, 8) == (2, 4)
    refused = {
        (0, 1): r"^mesh.data=0 is out of range: it must be a positive number of devices, or -1",
        (-1, 2.0): r"^mesh.fsdp=2.0 is out of range",
        (-1, -1): r"^mesh.data=-1, mesh.fsdp=-1: at most one mesh axis may be -1; give the "
                  r"other a number of devices \(this run has 8\)",
        (-1, 3): r"^mesh.data=-1, mesh.fsdp=3: the 8 devices do not split into groups of 3, so "
                 r"mesh.data=-1 cannot take the rest; give mesh.fsdp a divisor of 8 \(1, 2, 4, 8\)",
        (2, 2): r"^mesh.data=2, mesh.fsdp=2 lay out 4 devices, but this run has 8; make "
                r"mesh.data \* mesh.fsdp = 8, or set one of them to -1",
    }
    for (data, fsdp), message in refused.items():
        with pytest.raises(ConfigError, match=message):
            mesh_shape({"data": data, "fsdp": fsdp}, 8)


def test_the_mesh_is_checked_before_a_training_run():
    config = tiny_config()
    config.mesh.fsdp = 2  # this process has one device
    with pytest.raises(ConfigError, match=r"mesh.data=-1, mesh.fsdp=2: the 1 devices"):
        check_run_config(config, ("train",))
    check_run_config(config, ("interp",))  # interp reads checkpoints onto the devices it has


def test_every_device_of_the_mesh_takes_an_equal_share_of_each_micro_batch():
    config = tiny_config()
    config.mesh.update(data=-1, fsdp=8)
    config.train.update(batch_size=12, grad_accum_steps=3)
    with pytest.raises(ConfigError, match=r"the micro-batch \(train.batch_size / "
                       r"train.grad_accum_steps = 12 / 3 = 4\) must be divisible by the 8 "
                       r"devices of the mesh \(mesh.data=1 x mesh.fsdp=8\)"):
        check_mesh(config, device_count=8)
    config.train.update(batch_size=24)
    check_mesh(config, device_count=8)


# --- on 8 forced host devices -------------------------------------------------------------------

def _assert_same_run(expected, actual, module) -> None:
    def losses(workdir):
        return {(r["split"], r["step"]): r["loss"] for r in read_metrics(workdir)}

    expected_losses, actual_losses = losses(expected), losses(actual)
    assert set(actual_losses) == set(expected_losses)
    assert {("train", STEPS), ("validation", 0), ("validation", STEPS)} <= set(expected_losses)
    for key, loss in expected_losses.items():
        assert actual_losses[key] == pytest.approx(loss, rel=1e-5), key
    for left, right in zip(jax.tree_util.tree_leaves(checkpoint_params(expected, STEPS, module)),
                           jax.tree_util.tree_leaves(checkpoint_params(actual, STEPS, module)),
                           strict=True):
        np.testing.assert_allclose(left, right, rtol=1e-5, atol=1e-6)


def _saved_partition_spec(workdir, *path: str | int) -> tuple:
    """How the training process held state leaf `path` when it saved the last checkpoint (orbax
    records each array's sharding)."""
    with ocp.StandardCheckpointer() as reader:
        leaf = reader.metadata(workdir / "checkpoints" / str(STEPS) / "state").item_metadata
    for key in path:
        leaf = leaf[key]
    return tuple(leaf.sharding.partition_spec)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_three_fsdp_steps_on_eight_devices_equal_one_device(variant, three_step_runs):
    one_device, fsdp = three_step_runs(variant, "one_device"), three_step_runs(variant, "fsdp8")
    assert _saved_partition_spec(one_device, "params", *LARGE_MATRIX[variant]) == ()
    # The large matrix and Adam's moments of it were split over the 8 devices, a vector was not.
    assert _saved_partition_spec(fsdp, "params", *LARGE_MATRIX[variant]) == (None, FSDP_AXIS)
    for moment in ("mu", "nu"):
        assert _saved_partition_spec(fsdp, "opt_state", 1, 0, moment,
                                     *LARGE_MATRIX[variant]) == (None, FSDP_AXIS)
    assert _saved_partition_spec(fsdp, "params", "final_norm", "scale") == ()
    _assert_same_run(one_device, fsdp, VARIANTS[variant])


def test_whole_logits_split_over_eight_devices_train_as_the_chunked_head_on_one(
        three_step_runs):
    """`head_impl=auto` is the chunked head on this CPU, so one device runs it; eight run the
    whole logits, split over the batch."""
    whole = three_step_runs("crate", "fsdp8_whole_logits")
    one_device = three_step_runs("crate", "one_device")
    assert json.loads((whole / "config.json").read_text())["model"]["head_impl"] == "logits"
    assert json.loads((one_device / "config.json").read_text())["model"]["head_impl"] == "auto"
    _assert_same_run(one_device, whole, crate)


# (Restoring an fsdp=8 checkpoint's parameters onto one device is done by every comparison.)
@pytest.mark.parametrize("saved, resumed", [("fsdp8", "data8"), ("one_device", "fsdp8")])
def test_a_checkpoint_resumes_on_another_mesh_and_continues_the_same_run(
        saved, resumed, three_step_runs, prepared, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(three_step_runs("crate", saved), workdir)
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))  # as if stopped after step 2's save
    output = train_three_steps(workdir, prepared, "crate", resumed)
    assert "step 0 |" not in output and f"step {STEPS} | loss" in output  # resumed at step 2
    _assert_same_run(three_step_runs("crate", "one_device"), workdir, crate)
