"""A study's worker processes: results, errors and deaths come back to the study's process.

(The study end to end with workers, its files and its signals: `tests/test_study.py`.)
"""

import os
import re

import pytest

from configs import ablation
from crate_jax.model import ConfigError
from crate_jax.study_workers import WorkerDied, Workers, workers_for


def test_each_job_comes_back_with_its_result_its_error_or_its_death(tmp_path):
    logs = tmp_path / "logs"
    with Workers(2) as workers:
        workers.start("sum", sum, ([1, 2, 3],), logs / "sum.log")
        workers.start("fails", int, ("seven",), logs / "fails.log")
        assert not workers.has_room()
        finished = {}
        with pytest.raises(ValueError, match="invalid literal for int"):
            while True:  # `sum` may end first; `fails` raises its own error here
                name, result = workers.next_finished()
                finished[name] = result
        assert finished in ({}, {"sum": 6})
        assert not workers.running
        workers.start("dies", os.abort, (), logs / "dies.log")
        with pytest.raises(WorkerDied, match=re.escape(str(logs / "dies.log"))):
            workers.next_finished()
    assert "ValueError" in (logs / "fails.log").read_text()  # its traceback, in its log


def test_study_workers_is_checked_and_auto_is_two_on_this_cpu():
    config = ablation.get_config()
    assert config.study.workers == 0
    cores = len(os.sched_getaffinity(0))
    assert workers_for(config, jobs=20) == (2 if cores >= 2 else 1)
    assert workers_for(config, jobs=1) == 1
    config.study.workers = 3
    assert workers_for(config, jobs=20) == 3
    config.study.workers = -1
    with pytest.raises(ConfigError, match=r"study.workers=-1 must be an integer >= 0"):
        workers_for(config, jobs=20)
