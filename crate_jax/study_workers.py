"""A study's runs side by side: each job (a run and its control) in a worker process of its own.

Why: on a CPU the training step of a small model leaves cores idle between XLA's small
operations, and much of the interp stage is single-threaded Python; a second run at the same
time fills what the first leaves idle (`benchmarks/README.md`, "Study workers", has the measured
gain). On an accelerator the runs stay in the study's own process (`workers_for`).

Why no result changes: a worker is a fresh interpreter (`python -m crate_jax.study_workers`,
never a fork of a process that already runs XLA's threads) with the study's environment and CPU
affinity, so XLA sees the same cores, builds the same thread pool and compiles the same
programs: a run writes the same files as in the study's process (a test compares them). Each
run keeps its one writer (its workdir lock), and what a worker prints goes to its log
(`StudyLayout.worker_log`), not into another run's lines.

Stopping: a signal to the study (Ctrl-C, a scheduler's SIGTERM) is passed to every worker as
SIGTERM. A worker that is training saves a checkpoint and stops at the next step; any other
stops at once, its finished work on disk (atomic writes, per-neuron appends), as the study's
own process would. The study waits for them before it ends, so nothing is cut mid-save. A worker
that fails stops the others the same way; its error is raised in the study's process, so a
`ConfigError` is still one FATAL line.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from crate_jax.atomic_files import atomic_path
from crate_jax.model import ConfigError

# The measured setting (`benchmarks/README.md`, "Study workers"): two jobs at once on a 2-core
# CPU. More cores may take more; `study.workers` says how many.
AUTO_WORKERS = 2
_POLL_SECONDS = 0.2  # how often the study looks for a finished worker (a job takes minutes)


class WorkerDied(RuntimeError):
    """A worker ended without a result or an error (killed, out of memory)."""


class _Stopped(BaseException):
    """SIGTERM or SIGINT in a worker outside the training loop (which saves and returns)."""


def workers_for(config, jobs: int) -> int:
    """`study.workers`: how many jobs run at once (0, the default study's: `AUTO_WORKERS` on a
    CPU with that many cores, else 1; never more than `jobs`). On an accelerator, or in a
    multi-process job, a study's runs stay in its own process (each worker would claim the
    device)."""
    import jax

    workers = config.study.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ConfigError(f"study.workers={workers!r} must be an integer >= 0 (how many runs "
                          f"at once; 0 picks {AUTO_WORKERS} on a CPU with {AUTO_WORKERS} cores "
                          "or more)")
    on_cpu = jax.process_count() == 1 and jax.default_backend() == "cpu"
    if workers == 0:
        workers = AUTO_WORKERS if on_cpu and _cores() >= AUTO_WORKERS else 1
    elif workers > 1 and not on_cpu:
        raise ConfigError(f"study.workers={workers} runs several runs at once, each in its own "
                          f"process, which only a CPU study can ({jax.default_backend()} here, "
                          f"{jax.process_count()} process(es)); set study.workers=1")
    return max(1, min(workers, jobs))


def _cores() -> int:
    """The cores this process may run on (its affinity, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class InProcess:
    """One job at a time in the study's own process, its output on the terminal: `start` runs
    the job to its end, and `running` says its result is still to be collected."""

    def __init__(self) -> None:
        self._done: list[tuple[str, dict]] = []

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc) -> None:
        return None

    @property
    def running(self) -> bool:
        return bool(self._done)

    def has_room(self) -> bool:
        return not self._done

    def start(self, name: str, job: Callable[..., dict], args: tuple, log: Path) -> None:
        self._done.append((name, job(*args)))

    def next_finished(self) -> tuple[str, dict]:
        return self._done.pop(0)

    def stop(self) -> None:
        return None


class Workers:
    """Up to `count` jobs at once, each in a fresh worker process; see the module docstring."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._exchange = tempfile.TemporaryDirectory(prefix="crate_jax_study_workers_")
        self._running: dict[str, tuple[subprocess.Popen, Path, Path]] = {}

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        """However the study leaves (finished, a signal, an error), no worker outlives it: the
        running ones are asked to stop and waited for while they save."""
        self.stop()
        self._exchange.cleanup()

    @property
    def running(self) -> bool:
        return bool(self._running)

    def has_room(self) -> bool:
        return len(self._running) < self.count

    def start(self, name: str, job: Callable[..., dict], args: tuple, log: Path) -> None:
        """Starts `job(*args)` in a worker: `python -m crate_jax.study_workers` (a module of its
        own, so nothing of the caller's script is imported again), the job handed over pickled."""
        log.parent.mkdir(parents=True, exist_ok=True)
        exchange = Path(self._exchange.name)
        job_file, result_file = exchange / f"{name}.job", exchange / f"{name}.result"
        job_file.write_bytes(pickle.dumps((job, args)))
        # The study's own import path, as a spawned process would get it (a checkout that is
        # not installed, a notebook's `sys.path`).
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
            entry for entry in sys.path if entry and Path(entry).exists())}
        with open(log, "ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "crate_jax.study_workers", str(job_file),
                 str(result_file)], stdout=output, stderr=subprocess.STDOUT, env=environment)
        self._running[name] = (process, result_file, log)

    def next_finished(self) -> tuple[str, dict]:
        """Waits for the next job to end: `(name, its result)`. A job that failed raises its
        error here (the others are stopped first)."""
        while True:
            for name, (process, _, _) in self._running.items():
                if process.poll() is not None:
                    outcome = self._collect(name)
                    if "error" in outcome:
                        self.stop()
                        raise outcome["error"]
                    return name, outcome["result"]
            time.sleep(_POLL_SECONDS)

    def _collect(self, name: str) -> dict:
        process, result_file, log = self._running.pop(name)
        process.wait()
        try:
            kind, value = pickle.loads(result_file.read_bytes())
        except (OSError, EOFError, pickle.UnpicklingError):
            kind, value = "died", None
        if kind == "result":
            return {"result": value}
        if kind == "stopped":
            return {"result": {"status": "interrupted", "signal": value}}
        if kind == "error":
            return {"error": value}
        return {"error": WorkerDied(f"the study's worker for {name} ended without a result "
                                    f"(exit code {process.returncode}: killed, or out of "
                                    f"memory?); its output is in {log}; finished work is kept, "
                                    "rerun the same command to resume")}

    def stop(self) -> None:
        """Asks every running worker to stop (SIGTERM) and waits until each has saved and ended."""
        for process, _, _ in self._running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name in list(self._running):
            self._collect(name)


def _work(job_file: str, result_file: str) -> None:
    """A worker's life: the job, then one pickled message for the study in `result_file`:
    `("result", the job's result)`, `("stopped", signal)` or `("error", the exception)`. Its
    output is the log the study opened for it."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # as `crate_jax.main` sets it

    def stop(signum, frame):
        raise _Stopped(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)  # the training loop puts its own (save, then stop) over it
    try:
        job, args = pickle.loads(Path(job_file).read_bytes())
        message = ("result", job(*args))
    except _Stopped as stopped:
        print(f"stopped by signal {stopped.args[0]}; finished work is kept", flush=True)
        message = ("stopped", stopped.args[0])
    except BaseException as error:
        traceback.print_exc()
        message = ("error", error)
    try:
        payload = pickle.dumps(message)
    except Exception:  # an exception that does not pickle: its text does
        payload = pickle.dumps(("error", RuntimeError(f"{type(message[1]).__name__}: "
                                                      f"{message[1]}")))
    with atomic_path(result_file) as temporary:  # whole or absent: a half-written one is no result
        temporary.write_bytes(payload)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    _work(*sys.argv[1:])
