"""Multi-process jobs: how a process finds its job, and real N-process runs on 127.0.0.1."""

import pytest

from crate_jax.distributed import DistributedError, JobSpec, job_spec

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
