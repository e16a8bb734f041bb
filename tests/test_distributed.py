"""Multi-process jobs: how a process finds its job, and real N-process runs on 127.0.0.1."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from run_helpers import (
    REPO,
    THREE_STEP_ARGS,
    THREE_STEP_TRAIN,
    checkpoint_params,
    run_main_arguments,
    tiny_config,
    with_data,
    workdir_with_data,
)

from crate_jax.distributed import DistributedError, JobSpec, job_spec
from crate_jax.layout import lock_file
from crate_jax.metrics_file import read_metrics
from crate_jax.train.checkpoints import Checkpointer
from crate_jax.train.loop import train_and_evaluate

SLURM_TWO_TASKS = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[01-02]",
                   "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}


def test_a_process_alone_joins_nothing():
    assert job_spec(environ={}) is None
    assert job_spec(environ={**SLURM_TWO_TASKS, "SLURM_NTASKS": "1"}) is None


def test_flags_name_the_whole_job():
    spec = job_spec("127.0.0.1:12355", 2, 1, environ=SLURM_TWO_TASKS)
    assert spec == JobSpec("flags", "127.0.0.1:12355", 2, 1)  # flags win over the cluster


def test_the_jax_variables_name_the_job():
    environ = {"JAX_COORDINATOR_ADDRESS": "node0:1234", "JAX_NUM_PROCESSES": "4",
               "JAX_PROCESS_ID": "3"}
    assert job_spec(environ=environ) == JobSpec("environment", "node0:1234", 4, 3)


def test_clusters_jax_detects_are_left_to_its_detection():
    assert job_spec(environ=SLURM_TWO_TASKS) == JobSpec("SLURM")
    assert job_spec(environ={"OMPI_COMM_WORLD_SIZE": "8"}) == JobSpec("Open MPI")


@pytest.mark.parametrize("given, words", [
    (dict(num_processes=2, process_id=0), "--coordinator_address is missing"),
    (dict(coordinator_address="127.0.0.1:1"), "--num_processes, --process_id are missing"),
    (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=0), "is not HOST:PORT"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), "positive integer"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), "must be in 0..1"),
])
def test_a_half_given_job_is_one_clear_error(given, words):
    with pytest.raises(DistributedError, match=words):
        job_spec(**given, environ={})


def test_a_malformed_variable_is_named():
    with pytest.raises(DistributedError, match="JAX_NUM_PROCESSES='two'"):
        job_spec(environ={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two",
                          "JAX_PROCESS_ID": "0"})


# --- Real jobs: `launch/local_multiprocess.sh` starts N processes of crate_jax.main on 127.0.0.1.

def _launch(processes: int, workdir: Path, prepared: Path, log_dir: Path, *overrides: str,
            wait: bool = True):
    """`launch/local_multiprocess.sh` running the tiny training of `run_main` in `workdir`."""
    main_arguments = run_main_arguments(workdir, prepared, *overrides)
    command = ["bash", str(REPO / "launch" / "local_multiprocess.sh"), str(processes),
               "--log-dir", str(log_dir), "--", *main_arguments]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
           "CRATE_JAX_PYTHON": sys.executable, "XLA_FLAGS": ""}
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def _digest_line(output: str, process: int) -> str:
    found = re.findall(rf"^process {process}: step \d+, parameters sha256 \w+", output, re.M)
    assert len(found) == 1, output[-3000:]
    return found[0].split(": ", 1)[1]


def test_two_processes_train_as_one_and_a_single_process_resumes_their_checkpoint(
        prepared, tmp_path, three_step_runs, capsys):
    one_process_run = three_step_runs("crate", "one_device")
    workdir, logs = workdir_with_data(prepared, tmp_path), tmp_path / "logs"
    result = _launch(2, workdir, prepared, logs, *THREE_STEP_ARGS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "process 0 of 2 (joined via flags" in result.stdout
    # Both processes end with the same parameters (replicated over the data axis) ...
    other = (logs / "process_1.log").read_text()
    assert _digest_line(result.stdout, 0) == _digest_line(other, 1)
    # ... equal to one process training on the same global batches.
    for ours, single in zip(jax.tree_util.tree_leaves(checkpoint_params(workdir, 3)),
                            jax.tree_util.tree_leaves(checkpoint_params(one_process_run, 3)),
                            strict=True):
        np.testing.assert_allclose(ours, single, rtol=1e-5, atol=1e-6)
    # Only process 0 writes: every metric once, one event file per split, no stray logs.
    records = read_metrics(workdir)
    assert [(r["split"], r["step"]) for r in records] == [
        ("validation", 0), ("train", 1), ("train", 2), ("train", 3), ("validation", 3)]
    single = {(r["split"], r["step"]): r["loss"] for r in read_metrics(one_process_run)}
    for record in records:
        assert record["loss"] == pytest.approx(single[record["split"], record["step"]], rel=1e-5)
    for split in ("train", "validation"):
        assert len(os.listdir(workdir / "tensorboard" / split)) == 1
    # The same files as one process's run, and the lock the job held through process 0
    # (released: it names no holder).
    assert sorted(p.name for p in workdir.iterdir() if p != lock_file(workdir)) == sorted(
        p.name for p in one_process_run.iterdir() if p != lock_file(one_process_run))
    assert lock_file(workdir).read_text() == ""
    assert json.loads((workdir / "run_info.json").read_text())["process_count"] == 2
    # The 2-process checkpoint resumes in one process (this one: `THREE_STEP_ARGS` as a config,
    # which saves a process start), and training goes on.
    capsys.readouterr()
    config = with_data(tiny_config(**{**THREE_STEP_TRAIN, "num_steps": 5}), prepared)
    summary = train_and_evaluate(config, workdir)
    resumed = capsys.readouterr().out
    print(resumed, end="")  # still shown with a failure
    assert summary["status"] == "completed" and summary["step"] == 5, summary
    assert "step 0 |" not in resumed and "step 5 | loss" in resumed, resumed
    assert [r["step"] for r in read_metrics(workdir) if r["split"] == "train"] == [1, 2, 3, 4, 5]


def test_a_sigterm_to_one_process_stops_every_process_at_the_same_saved_step(prepared, tmp_path):
    workdir, logs = workdir_with_data(prepared, tmp_path), tmp_path / "logs"
    job = _launch(2, workdir, prepared, logs, "--config.train.num_steps=500",
                  "--config.train.log_every=2", "--config.train.checkpoint_every=400",
                  "--config.train.eval_every=400", wait=False)
    seen = []
    try:
        for line in job.stdout:
            seen.append(line)
            if line.startswith("step 4 | loss"):
                # Only process 1 gets the signal, as when one host of a pod is preempted first.
                subprocess.run(["pkill", "-TERM", "-f", f"workdir={workdir} .*process_id=1"],
                               check=True)
                break
        output = "".join(seen) + job.communicate(timeout=180)[0]
    finally:  # a failed test leaves no job behind
        job.kill()
        subprocess.run(["pkill", "-KILL", "-f", f"workdir={workdir} "], check=False)
    assert job.returncode == 128 + signal.SIGTERM, output[-3000:]
    stopped_at = int(re.search(r"stopped by signal at step (\d+)", output).group(1))
    assert 4 <= stopped_at < 500
    other = (logs / "process_1.log").read_text()
    assert _digest_line(output, 0) == _digest_line(other, 1) == _digest_line(output, 0)
    assert f"step {stopped_at}," in _digest_line(other, 1)
    with Checkpointer(workdir / "checkpoints", save_every=400) as checkpointer:
        assert checkpointer.all_steps() == [stopped_at]
