"""A full disk and a corrupt checkpoint, as a user of `python -m crate_jax.main` meets them: one
FATAL line after the run's progress, nothing else, and finished work a rerun resumes from.

The full disk is a small tmpfs mounted over one folder of the workdir, in a private mount
namespace (`unshare --mount --map-root-user`, no root needed), so nothing stays mounted after
the test. Both runs of a test, the one that fills the disk and the rerun once the disk has
room, happen in that namespace: the tmpfs, with the files the first run kept, lives as long as
it does.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from run_helpers import (
    REPO,
    TRAINED_STEPS,
    copy_run,
    run_main_arguments,
    workdir_with_data,
)
from test_checkpoints import corrupt_array_files

# What a run prints before it fails: its progress lines, and nothing that is not one.
PROGRESS_LINE = re.compile(r"(step \d+ \| |interp: )")
NOISE = ("Traceback", "Exception ignored", "Event loop is closed")
INTERP_ARGS = [f"--config.interp.{key}={value}" for key, value in dict(
    sites="ista", num_sequences=16, seq_len=64, window=16, top_k=8, random_k=8, quantile_bins=2,
    per_bin=2, neurons_per_layer=8, bootstrap_samples=100).items()]
# The folder's first run fills its tmpfs; the rerun gets this much room, as after freeing space.
ROOM = "1g"
# Runs the command ("$@") with a tmpfs of size $1 mounted on $2, writes its output and exit
# status to $3.first*, grows the tmpfs, runs the same command again ($3.second*) and lists the
# paths the folder holds then ($3.listing).
_ON_A_SMALL_DISK = """
set -u
mount -t tmpfs -o "size=$1" tmpfs "$2" || exit 97
folder=$2; out=$3; shift 3
"$@" > "$out.first" 2>&1; echo $? > "$out.first_rc"
mount -o "remount,size=ROOM" "$folder" || exit 98
"$@" > "$out.second" 2>&1; echo $? > "$out.second_rc"
cd "$folder" && find . -mindepth 1 > "$out.listing"
""".replace("ROOM", ROOM)


class Runs:
    """The two runs of `run_twice_on_a_small_disk`: output and exit status of each, and what the
    small disk's folder holds after the second."""

    def __init__(self, out: Path):
        self.first = out.with_suffix(".first").read_text()
        self.first_rc = int(out.with_suffix(".first_rc").read_text())
        self.second = out.with_suffix(".second").read_text()
        self.second_rc = int(out.with_suffix(".second_rc").read_text())
        self.listing = [line.removeprefix("./")
                        for line in out.with_suffix(".listing").read_text().splitlines()]


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """Skips the module where a private mount namespace with a tmpfs cannot be made."""
    probe = tmp_path_factory.mktemp("mount_probe")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot mount a small tmpfs without root")
    tried = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c",
                            'mount -t tmpfs -o size=64k tmpfs "$1"', "sh", str(probe)],
                           capture_output=True, text=True)
    if tried.returncode:
        pytest.skip(f"user and mount namespaces are not permitted here ({tried.stderr.strip()})")


def run_twice_on_a_small_disk(folder: Path, size: int, arguments: list[str],
                              out: Path) -> Runs:
    """`python -m crate_jax.main arguments` with `folder` on a `size`-byte tmpfs, then the same
    command again once that disk has room."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    command = [sys.executable, "-m", "crate_jax.main", *arguments]
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", _ON_A_SMALL_DISK,
                           "sh", str(size), str(folder), str(out), *command],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return Runs(out)


def assert_one_fatal_line_after_progress(output: str) -> str:
    """The FATAL line, once checked to be the last line and every line before it progress."""
    lines = output.splitlines()
    assert lines and lines[-1].startswith("FATAL: "), output[-3000:]
    assert all(PROGRESS_LINE.match(line) for line in lines[:-1]), output[-3000:]
    assert not any(noise in output for noise in NOISE), output[-3000:]
    return lines[-1]


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_the_rerun_resumes(
        small_disk, prepared, trained, tmp_path):
    """Room for one checkpoint and a half: step 5 is saved, step 10's save fills the disk.
    Before: a FATAL line, then tens of `RuntimeError: Event loop is closed` tracebacks from
    orbax's writes left running (none in some runs)."""
    checkpoint = folder_bytes(trained / "checkpoints" / str(TRAINED_STEPS))
    workdir = workdir_with_data(prepared, tmp_path)
    arguments = run_main_arguments(workdir, prepared, "--config.train.num_steps=10",
                                   "--config.train.checkpoint_every=5",
                                   "--config.train.log_every=5", "--config.train.eval_every=5")
    runs = run_twice_on_a_small_disk(workdir / "checkpoints", checkpoint * 3 // 2, arguments,
                                     tmp_path / "out")

    fatal = assert_one_fatal_line_after_progress(runs.first)
    assert runs.first_rc != 0
    assert fatal.startswith(f"FATAL: the disk holding {workdir / 'checkpoints'} is full "
                            "(No space left on device)"), fatal
    assert "the checkpoints up to step 5 are kept" in fatal
    assert "rerun the same command to resume from step 5" in fatal

    # The rerun, with room, resumes from step 5 (no step-0 evaluation) to the same step 10.
    assert runs.second_rc == 0, runs.second[-3000:]
    assert "step 0 |" not in runs.second and "Traceback" not in runs.second
    validation_10 = [line for line in runs.first.splitlines()
                     if line.startswith("step 10 | validation loss")]
    assert validation_10 and validation_10[0] in runs.second.splitlines()
    assert {"5", "10"} <= set(runs.listing), runs.listing


def test_a_full_disk_during_interp_is_one_line_and_the_rerun_finishes(
        small_disk, prepared, trained, tmp_path):
    """`interp/` on a 100 kB disk fills while mining records. Before: a raw `OSError: [Errno
    28]` traceback and no FATAL line."""
    workdir = copy_run(trained, tmp_path, "run")
    arguments = run_main_arguments(workdir, prepared, f"--config.train.num_steps={TRAINED_STEPS}",
                                   f"--config.train.checkpoint_every={TRAINED_STEPS}",
                                   "--config.stages=interp", *INTERP_ARGS)
    runs = run_twice_on_a_small_disk(workdir / "interp", 100_000, arguments, tmp_path / "out")

    fatal = assert_one_fatal_line_after_progress(runs.first)
    assert runs.first_rc != 0
    assert fatal.startswith(f"FATAL: the disk holding {workdir}"), fatal
    assert "is full (No space left on device)" in fatal
    assert "finished work is kept" in fatal and "rerun the same command to resume" in fatal

    assert runs.second_rc == 0, runs.second[-3000:]
    assert "Traceback" not in runs.second
    assert {"summary.json", "report.md"} <= set(runs.listing), runs.listing
    assert not [path for path in runs.listing if path.endswith(".tmp")], runs.listing


def test_a_corrupt_checkpoint_is_one_fatal_line_and_nothing_else(prepared, trained, tmp_path):
    """Before: the right FATAL line, then in most runs 7 to 80 lines of `Event loop is closed`
    tracebacks or `Exception ignored in: <coroutine ... _read_array_index_and_device_put>`
    (orbax closed its event loop under the reads still running). Two runs: each was noisy about
    five times in six; test_checkpoints.py repeats the failed restore itself many times."""
    workdir = copy_run(trained, tmp_path, "run")
    step_dir = workdir / "checkpoints" / str(TRAINED_STEPS)
    corrupt_array_files(step_dir)
    arguments = run_main_arguments(workdir, prepared,
                                   f"--config.train.num_steps={TRAINED_STEPS + 10}",
                                   f"--config.train.checkpoint_every={TRAINED_STEPS}",
                                   "--config.train.log_every=10", "--config.train.eval_every=20")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "crate_jax.main", *arguments], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode != 0
        assert output.splitlines() == [output.strip()], output[-3000:]
        assert output.startswith(f"FATAL: checkpoint step {TRAINED_STEPS} at {step_dir} is "
                                 "unreadable"), output
        assert "delete that step directory" in output
