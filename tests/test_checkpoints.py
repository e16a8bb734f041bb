"""Checkpointer against real orbax and real files: exact round trips, retention, clear errors."""

import gc
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from run_helpers import read_only

from crate_jax.train.checkpoints import Checkpointer, CheckpointError

REPO_ROOT = Path(__file__).resolve().parent.parent
META = {"config": {"model": {"embed_dim": 8, "attention": "mssa"}, "lr": 1e-3},
        "sampler_position": 12345, "data_fingerprint": "abc123", "versions": {"jax": "x"}}


class TinySparseLayer(nn.Module):
    """Parameter names shaped like the real model's: layer_0/ista/dictionary and friends."""

    width: int = 8
    expansion: int = 4

    @nn.compact
    def __call__(self, x):
        dictionary = self.param("dictionary", nn.initializers.normal(),
                                (self.width, self.expansion * self.width))
        return nn.relu(x @ dictionary) @ dictionary.T


class TinyModel(nn.Module):
    expansion: int = 4

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8, name="embed")(x)
        x = x + TinySparseLayer(expansion=self.expansion, name="ista")(x)
        return nn.Dense(3, name="head")(nn.LayerNorm(name="norm")(x))


class TinyStack(nn.Module):
    expansion: int = 4
    num_layers: int = 1

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            x = TinyModel(expansion=self.expansion, name=f"layer_{i}")(x)
        return x


def train_state(expansion=4, num_layers=1, step=200):
    """Params, adamw state after one update (so its moments are not zeros), step and key data."""
    model = TinyStack(expansion=expansion, num_layers=num_layers)
    params = model.init(jax.random.key(0), jnp.ones((2, 5)))["params"]
    optimizer = optax.adamw(1e-3)
    opt_state = optimizer.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return {"params": params, "opt_state": opt_state, "step": jnp.asarray(step, jnp.int32),
            "rng": jax.random.key_data(jax.random.key(42))}


def abstract_of(state, sharding_for=None):
    def abstract(leaf):
        sharding = sharding_for(leaf) if sharding_for else leaf.sharding
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
    return jax.tree.map(abstract, state)


def files_under(directory):
    """{relative path: bytes} of every file, to show an error path changed nothing on disk."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


@pytest.fixture
def state():
    return train_state()


@pytest.fixture
def saved_run(tmp_path, state):
    """A run directory with finished checkpoints at steps 100 and 200; returns its path."""
    directory = tmp_path / "checkpoints"
    with Checkpointer(directory, save_every=100) as ckpt:
        assert ckpt.save(100, state, META, force=True)
        assert ckpt.save(200, state, META, force=True)
    return directory


def test_round_trip_is_exact(tmp_path, state):
    directory = tmp_path / "checkpoints"
    with Checkpointer(directory, save_every=100) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(200, state, META)
    # A fresh object, as after a restart, sees the finished checkpoint.
    with Checkpointer(directory, save_every=100) as ckpt:
        assert ckpt.latest_step() == 200
        restored, meta = ckpt.restore(ckpt.latest_step(), abstract_of(state))
    assert_trees_equal(restored, state)
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
    assert meta == META


def test_restore_without_step_takes_latest_and_wait_makes_async_saves_readable(tmp_path, state):
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        ckpt.save(1, state, {"n": 1})
        ckpt.save(2, train_state(step=2), {"n": 2})
        ckpt.wait()
        restored, meta = ckpt.restore(None, abstract_of(state))
    assert meta == {"n": 2} and int(restored["step"]) == 2


def test_buffers_can_be_freed_as_soon_as_save_returns(tmp_path, state):
    """The loop donates the state to the next step: the async save must not read it later."""
    on_device = jax.tree.map(jnp.copy, state)
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        assert ckpt.save(1, on_device, META)
        for leaf in jax.tree.leaves(on_device):
            leaf.delete()
        ckpt.wait()
        restored, _ = ckpt.restore(1, abstract_of(state))
    assert_trees_equal(restored, state)


def test_keeps_only_the_last_k(tmp_path, state):
    with Checkpointer(tmp_path, save_every=1, keep=2) as ckpt:
        for step in range(1, 6):
            ckpt.save(step, state, META)
        ckpt.wait()
        assert ckpt.all_steps() == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["4", "5"]


def test_save_follows_the_cadence_and_never_overwrites(tmp_path, state):
    with Checkpointer(tmp_path, save_every=3, keep=None) as ckpt:
        saved = [step for step in range(11) if ckpt.save(step, state, META)]
        assert saved == [0, 3, 6, 9]
        assert not ckpt.save(9, state, META), "a step already saved is not written again"
        assert not ckpt.save(10, state, META), "off-cadence steps need force"
        assert ckpt.save(10, state, META, force=True)
        assert not ckpt.save(10, state, META, force=True)
        ckpt.wait()
        assert ckpt.all_steps() == [0, 3, 6, 9, 10]


def test_restore_places_arrays_on_the_target_named_sharding(saved_run, state):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    along_data = NamedSharding(mesh, PartitionSpec("data"))
    abstract = abstract_of(state, lambda leaf: along_data if leaf.ndim else replicated)
    with Checkpointer(saved_run, save_every=100) as ckpt:
        restored, _ = ckpt.restore(200, abstract)
    assert_trees_equal(restored, state)
    for leaf, target in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract), strict=True):
        assert leaf.sharding == target.sharding


def test_restore_on_eight_devices_of_a_checkpoint_saved_on_one(saved_run, state, tmp_path):
    """A run resumes on another device count: the dictionary is split 8 ways over its columns."""
    expected = tmp_path / "expected.npz"
    np.savez(expected, dictionary=state["params"]["layer_0"]["ista"]["dictionary"],
             step=state["step"])
    script = textwrap.dedent(f"""
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec
        import tests.test_checkpoints as t
        from crate_jax.train.checkpoints import Checkpointer
        assert jax.device_count() == 8
        mesh = Mesh(np.array(jax.devices()), ("model",))
        columns = NamedSharding(mesh, PartitionSpec(None, "model"))
        replicated = NamedSharding(mesh, PartitionSpec())
        state = t.train_state()
        abstract = t.abstract_of(
            state, lambda leaf: columns if leaf.shape == (8, 32) else replicated)
        with Checkpointer({str(saved_run)!r}, save_every=100) as ckpt:
            restored, meta = ckpt.restore(200, abstract)
        dictionary = restored["params"]["layer_0"]["ista"]["dictionary"]
        assert dictionary.sharding == columns, dictionary.sharding
        assert len(dictionary.addressable_shards) == 8
        expected = np.load({str(expected)!r})
        np.testing.assert_array_equal(np.asarray(dictionary), expected["dictionary"])
        np.testing.assert_array_equal(np.asarray(restored["step"]), expected["step"])
        print("restored on", jax.device_count(), "devices")
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT / "tests"),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restored on 8 devices" in result.stdout


def corrupt_array_files(step_dir):
    """Overwrites, at their own length, the OCDBT data files that hold the arrays."""
    data_files = [path for path in (step_dir / "state").rglob("*")
                  if path.is_file() and path.parent.name == "d"]
    assert data_files, f"no OCDBT data files under {step_dir / 'state'}"
    rng = np.random.default_rng(0)
    for path in data_files:
        path.write_bytes(rng.integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


def test_corrupt_array_files_raise_a_clear_error_and_leave_files_alone(saved_run, state):
    corrupt_array_files(saved_run / "200")
    before = files_under(saved_run)
    with Checkpointer(saved_run, save_every=100) as ckpt:
        assert ckpt.latest_step() == 200
        with pytest.raises(CheckpointError) as error:
            ckpt.restore(200, abstract_of(state))
        message = str(error.value)
        assert "checkpoint step 200" in message and str(saved_run / "200") in message
        assert "unreadable" in message and "delete that step directory" in message
        assert "resume from step 100" in message
        assert "tensorstore_spec" not in message, "the cause is kept short"
        # The previous checkpoint is still good.
        restored, _ = ckpt.restore(100, abstract_of(state))
        assert_trees_equal(restored, state)
    assert files_under(saved_run) == before


def test_failed_restores_leave_no_read_behind_to_print_after_their_error(saved_run, state,
                                                                        capfd, monkeypatch):
    """Orbax closed its event loop as soon as the first read of a corrupt checkpoint failed; the
    other reads, finishing later in tensorstore's threads, printed `RuntimeError: Event loop is
    closed` tracebacks (and their destroyed coroutines `Exception ignored in: <coroutine ...>`)
    after the error, most of the time. Ten failed restores make that certain. Python reports
    both through `sys.unraisablehook` (printing them to stderr, outside pytest)."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    corrupt_array_files(saved_run / "200")
    with Checkpointer(saved_run, save_every=100) as ckpt:
        for _ in range(10):
            with pytest.raises(CheckpointError, match="checkpoint step 200"):
                ckpt.restore(200, abstract_of(state))
        restored, _ = ckpt.restore(100, abstract_of(state))
    assert_trees_equal(restored, state)
    gc.collect()  # a coroutine left unfinished prints when it is destroyed
    time.sleep(0.5)  # and a read left running, when tensorstore finishes it
    assert [f"{report.exc_type.__name__}: {report.exc_value}" for report in unraisable] == []
    printed = capfd.readouterr()
    assert printed.out + printed.err == "", (printed.out + printed.err)[-3000:]


def test_missing_meta_item_is_reported(saved_run, state):
    shutil.rmtree(saved_run / "200" / "meta")
    before = files_under(saved_run)
    with Checkpointer(saved_run, save_every=100) as ckpt:
        with pytest.raises(CheckpointError, match=r"step 200 .* unreadable \(its 'meta' item"):
            ckpt.restore(200, abstract_of(state))
    assert files_under(saved_run) == before


def test_corrupt_tree_metadata_is_reported(saved_run, state):
    (saved_run / "200" / "state" / "_METADATA").write_text("{ not json")
    with Checkpointer(saved_run, save_every=100) as ckpt:
        with pytest.raises(CheckpointError, match="step 200 .* unreadable"):
            ckpt.restore(200, abstract_of(state))


def test_shape_mismatch_names_the_parameter_and_both_shapes(saved_run):
    wider = train_state(expansion=2)  # dictionary (8, 16) instead of (8, 32)
    before = files_under(saved_run)
    with Checkpointer(saved_run, save_every=100) as ckpt:
        with pytest.raises(CheckpointError) as error:
            ckpt.restore(200, abstract_of(wider))
    message = str(error.value)
    assert f"checkpoint at {saved_run / '200'} does not match this model" in message
    assert ("params/layer_0/ista/dictionary has shape (8, 32) in the checkpoint but (8, 16) "
            "in the model") in message
    assert "use a new --workdir or the same config" in message
    assert message.index("params/") < message.index("opt_state/"), "parameters come first"
    assert files_under(saved_run) == before


def test_params_only_restore_needs_no_optimizer_and_returns_only_the_parameters(saved_run, state):
    """What evaluation needs: the trained parameters, from their shapes alone."""
    with Checkpointer(saved_run, save_every=100) as ckpt:
        params = ckpt.restore_params(200, abstract_of(state["params"]))
        latest = ckpt.restore_params(None, abstract_of(state["params"]))
    assert_trees_equal(params, state["params"])
    assert_trees_equal(latest, state["params"])


def test_params_only_restore_checks_shapes_as_restore_does(saved_run):
    wider = train_state(expansion=2)
    before = files_under(saved_run)
    with Checkpointer(saved_run, save_every=100) as ckpt:
        with pytest.raises(CheckpointError) as error:
            ckpt.restore_params(200, abstract_of(wider["params"]))
        with pytest.raises(CheckpointError, match=r"step 150 .*finished steps: \[100, 200\]"):
            ckpt.restore_params(150, abstract_of(wider["params"]))
    message = str(error.value)
    assert f"checkpoint at {saved_run / '200'} does not match this model" in message
    assert ("params/layer_0/ista/dictionary has shape (8, 32) in the checkpoint but (8, 16) "
            "in the model") in message
    assert "opt_state" not in message, "the optimizer state is neither read nor compared"
    assert files_under(saved_run) == before


def test_structure_mismatch_names_missing_and_extra_keys(saved_run, state):
    deeper = train_state(num_layers=2)
    with Checkpointer(saved_run, save_every=100) as ckpt:
        with pytest.raises(CheckpointError) as error:
            ckpt.restore(200, abstract_of(deeper))
        assert "params/layer_1/embed/bias is in the model but not in the checkpoint" in str(
            error.value)

        fewer = dict(state)
        fewer.pop("rng")
        with pytest.raises(CheckpointError, match="rng is in the checkpoint but not in the model"):
            ckpt.restore(200, abstract_of(fewer))


def test_half_written_step_directories_are_ignored(saved_run, state):
    # What a save killed before its final rename leaves behind (today's and older orbax names).
    shutil.copytree(saved_run / "200", saved_run / "300.orbax-checkpoint-tmp")
    shutil.copytree(saved_run / "200", saved_run / "400.orbax-checkpoint-tmp-1700000000")
    with Checkpointer(saved_run, save_every=100) as ckpt:
        assert ckpt.latest_step() == 200
        assert ckpt.all_steps() == [100, 200]
        _, meta = ckpt.restore(None, abstract_of(state))
        assert meta == META
        # Saving that step again replaces the leftover.
        assert ckpt.save(300, state, META)
        ckpt.wait()
        assert ckpt.latest_step() == 300
    assert not (saved_run / "300.orbax-checkpoint-tmp").exists()


def test_a_foreign_step_directory_is_not_a_crate_jax_checkpoint(tmp_path, state):
    (tmp_path / "100").mkdir()
    (tmp_path / "100" / "notes.txt").write_text("not a checkpoint")
    with Checkpointer(tmp_path, save_every=100) as ckpt:
        with pytest.raises(CheckpointError, match=r"100 is not a crate_jax checkpoint.*notes.txt"):
            ckpt.restore(100, abstract_of(state))
    assert (tmp_path / "100" / "notes.txt").read_text() == "not a checkpoint"


def test_a_file_in_place_of_the_directory_is_refused(tmp_path):
    path = tmp_path / "checkpoints"
    path.write_text("oops")
    with pytest.raises(CheckpointError, match="is a file, not a checkpoint directory"):
        Checkpointer(path, save_every=100)


def test_restore_of_a_missing_step_lists_the_ones_there(saved_run, tmp_path, state):
    with Checkpointer(saved_run, save_every=100) as ckpt:
        with pytest.raises(CheckpointError, match=r"step 150 .*finished steps: \[100, 200\]"):
            ckpt.restore(150, abstract_of(state))
    with Checkpointer(tmp_path / "empty", save_every=100) as ckpt:
        with pytest.raises(CheckpointError, match="no finished checkpoint"):
            ckpt.restore(None, abstract_of(state))


def test_unsaveable_inputs_fail_before_anything_is_written(tmp_path, state):
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        with pytest.raises(CheckpointError, match="rng is a typed PRNG key"):
            ckpt.save(1, {**state, "rng": jax.random.key(0)}, META)
        with pytest.raises(CheckpointError, match="JSON-serialisable"):
            ckpt.save(1, state, {"when": object()})
        assert ckpt.all_steps() == []


def test_a_save_into_a_read_only_directory_fails_at_that_save_naming_it(tmp_path, state):
    directory = tmp_path / "checkpoints"
    with Checkpointer(directory, save_every=1) as ckpt:
        with read_only(directory):
            started = time.monotonic()
            with pytest.raises(CheckpointError, match=rf"step 1 into {directory} .*Error"):
                ckpt.save(1, state, META)
            assert time.monotonic() - started < 10
        assert ckpt.all_steps() == []


def test_a_read_only_checkpoint_directory_stops_a_run_before_training_with_one_line(tmp_path):
    """What a user sees: one FATAL line before any training (the workdir check that `main` runs
    first raises an error it prints as that line), not (as before) orbax's 300 s signal timeout
    at the first save and pages of background-thread tracebacks. A folder that turns read-only
    mid-run fails at that save (the test above)."""
    # Imported here: the eight-device test imports this module where `tests/` is not on the path.
    from run_helpers import raises_user_error

    from configs import crate
    from crate_jax.input_checks import WorkdirError
    from crate_jax.main import check_before_any_work

    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    with read_only(workdir / "checkpoints"):
        with raises_user_error(WorkdirError, re.escape(f"{workdir / 'checkpoints'} cannot "
                                                       "take new checkpoints")):
            check_before_any_work(crate.get_config("tiny"), str(workdir), ["train"])
    assert not (workdir / "metrics.jsonl").exists()


def test_a_failed_background_write_is_one_error_naming_its_step_and_the_cause(tmp_path):
    """A full disk, as the process sees it: files may not grow past 100 kB, so the arrays of step
    1 fail in orbax's background threads. The next save reports step 1, with the operating
    system's reason, and none of orbax's tracebacks."""
    script = textwrap.dedent(f"""
        import resource
        import jax
        from crate_jax.train.checkpoints import Checkpointer, CheckpointError
        state = {{"w": jax.random.normal(jax.random.key(0), (512, 512))}}  # 1 MiB, incompressible
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            with Checkpointer({str(tmp_path / "checkpoints")!r}, save_every=1) as ckpt:
                ckpt.save(1, state, {{}})
                ckpt.save(2, state, {{}})
        except CheckpointError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the background save of checkpoint step 1 into" in result.stdout, result.stdout
    assert "File too large" in result.stdout
    assert result.stderr.strip() == "", result.stderr[-3000:]
