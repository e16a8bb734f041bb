"""One writer per workdir, and a stop request honoured wherever it arrives: the CLI as users run
it, real processes, real signals."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from run_helpers import REPO, run_main

from crate_jax.layout import lock_file
from crate_jax.train.loop import MAX_STEPS_IN_FLIGHT
from crate_jax.workdir_lock import WorkdirInUse, hold_workdir

README = REPO / "README.md"
_HOLD = ("import sys, time\n"
         "from crate_jax.workdir_lock import hold_workdir\n"
         "with hold_workdir(sys.argv[1]):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(120)\n")


def _signalled_when(process: subprocess.Popen, prefix: str, signum: int,
                    delay_s: float = 0) -> str:
    """Sends `signum` `delay_s` after a line of `process`'s output starts with `prefix`; waits
    for it to end and returns all its output."""
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if line.startswith(prefix):
                time.sleep(delay_s)
                process.send_signal(signum)
                break
        output.extend(process.stdout)
        process.wait(timeout=120)
    finally:
        process.kill()
    return "".join(output)


def test_a_second_run_on_a_held_workdir_is_one_fatal_line_naming_the_holder(prepared,
                                                                             tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with hold_workdir(workdir):
        finished = run_main(workdir, prepared, "--config.train.num_steps=2")
    assert finished.returncode == 1
    last = finished.stderr.strip().splitlines()[-1]
    assert last.startswith(f"FATAL: --workdir={workdir} is in use by pid {os.getpid()} on host "
                           f"{socket.gethostname()}")
    assert "Traceback" not in finished.stderr
    # Refused before any work: nothing but the lock file in the workdir.
    assert sorted(p.name for p in workdir.iterdir()) == [lock_file(workdir).name]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirInUse, match=f"in use by pid {holder.pid} on host"):
            with hold_workdir(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with hold_workdir(tmp_path):  # kill -9 released it: the OS lock died with the process
        assert lock_file(tmp_path).read_text().startswith(f"pid {os.getpid()} ")
    assert lock_file(tmp_path).read_text() == ""  # released: no holder named
    with hold_workdir(tmp_path, enabled=False):  # a job's other processes take no lock
        pass


def test_sigterm_during_the_last_step_stops_before_the_next_stage(prepared, tmp_path):
    """A stop asked for at the last step (its log line, evaluation and save) is honoured: the
    run is complete and saved, `interp` does not start, and the exit says interrupted."""
    workdir = tmp_path / "run"
    process = run_main(workdir, prepared, "--config.train.num_steps=4",
                       "--config.train.eval_every=2", "--config.train.log_every=2",
                       "--config.train.checkpoint_every=2", "--config.interp.num_sequences=8",
                       "--config.interp.neurons_per_layer=4", "--config.stages=train,interp",
                       wait=False)
    text = _signalled_when(process, "step 4 | loss", signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "stopped by signal at the last step (4)" in text
    assert "train: interrupted; not run: interp" in text
    assert not (workdir / "interp").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_interp_is_one_line_and_a_rerun_finishes(prepared, tmp_path, signum):
    """Outside the training loop a signal ended the process silently (SIGTERM, rc -15) or with
    a KeyboardInterrupt traceback (Ctrl-C); now: one line, 128 + the signal, work kept."""
    workdir = tmp_path / "run"
    # Records mined from 256 sequences: the stage runs about 3 s after its first line (0.5 s
    # with 8 sequences and 4 neurons, which a loaded CI machine let finish before this test had
    # read that line and sent the signal).
    arguments = ("--config.train.num_steps=4", "--config.train.checkpoint_every=4",
                 "--config.interp.num_sequences=256", "--config.interp.neurons_per_layer=16",
                 "--config.stages=train,interp")
    process = run_main(workdir, prepared, *arguments, wait=False)
    text = _signalled_when(process, "interp: mining records", signum)
    assert process.returncode == 128 + signum, text[-3000:]
    assert "interp: interrupted; finished work is kept, rerun the same command" in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    if signum == signal.SIGTERM:
        finished = run_main(workdir, prepared, *arguments)
        assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
        assert (workdir / "interp" / "summary.json").exists()


def test_a_stop_is_acted_on_within_the_readme_bound_of_steps(prepared, tmp_path):
    """Steps are dispatched ahead of the device; unbounded, a SIGTERM waited for every queued
    step (2.3 s of them at this size here, 10 s in the issue's run). The stop line says how
    many steps ran after the signal, and that is at most MAX_STEPS_IN_FLIGHT + 1, the bound the
    README states."""
    workdir = tmp_path / "run"
    process = run_main(workdir, prepared, "--config.train.num_steps=2000",
                       "--config.train.log_every=2000", "--config.train.eval_every=2000",
                       "--config.train.checkpoint_every=2000", wait=False)
    # 1.5 s on: into the steady stream of steps (or, on a loaded machine, still compiling).
    text = _signalled_when(process, "step 0 | validation loss", signal.SIGTERM, delay_s=1.5)
    assert process.returncode == 128 + signal.SIGTERM, text[-3000:]
    stop = re.search(r"stopped by signal at step (\d+) \((\d+) steps? after the signal\)", text)
    assert stop, text[-3000:]
    assert 1 <= int(stop.group(2)) <= MAX_STEPS_IN_FLIGHT + 1, stop.group(0)
    readme = " ".join(README.read_text().split())
    assert f"at most {MAX_STEPS_IN_FLIGHT + 1} training steps after the signal" in readme


def test_a_rerun_removes_the_temporaries_that_killed_runs_left(prepared, tmp_path):
    """A kill -9 mid-write leaves `.NAME.PID.tmp` beside the file (data, tokenizer, a
    control's records); taking the workdir removes those of dead processes, and no other."""
    workdir = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    left = [workdir / "data" / f".train.bin.{dead_pid}.tmp",
            workdir / "data" / f".tokenizer.json.{dead_pid}.tmp",
            workdir / "controls" / "ista" / f".layer_0.jsonl.{dead_pid}.tmp"]
    alive = workdir / "nested" / f".scores.jsonl.{os.getpid()}.tmp"  # a live writer's
    kept = workdir / "notes.tmp"  # not a temporary of ours
    for path in [*left, alive, kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
    finished = run_main(workdir, prepared, "--config.train.num_steps=2")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "removed 3 temporary file(s) a stopped run left" in finished.stdout
    assert not any(path.exists() for path in left)
    assert alive.exists() and kept.exists()
    assert not [p for p in workdir.rglob(".*.tmp") if p != alive]  # the run left none itself
