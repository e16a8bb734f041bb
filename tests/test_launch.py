"""The launch scripts (`launch/`): what their dry runs tell a user, and that they run what they
print. No cluster here, so the cluster tools are stand-ins that do what the real ones would do on
this machine: a `gcloud` whose TPU workers are folders (each command runs in a real shell with
that folder as its home), an `srun` that starts each task with its own SLURM_PROCID, and a
`python` that records how it was started instead of training. The scripts themselves run for
real: their argument handling, quoting, process groups, signals and exit codes."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_helpers import REPO

LAUNCH = REPO / "launch"
SCRIPTS = ["local_multiprocess.sh", "gpu_slurm.sbatch", "tpu_pod.sh"]
# Main arguments a shell could mangle: a space, a quote, a dollar sign, a glob.
MAIN_ARGS = ["--config=configs/crate.py:2l", "--workdir=/shared/my runs/crate",
             "--config.data.source=text:/data/it's $HOME/*.txt"]

# Started as `python -m crate_jax.main ARGS`: records its argv, working folder, its environment's
# JAX and SLURM variables and the signals it gets into $FAKE_RECORDS/<process id or worker>.json,
# prints a line, then behaves as FAKE_MODE says. A signal ends it half a second later (as a
# checkpoint save would), so a second delivery of the same signal is seen.
FAKE_PYTHON = """#!{python}
import json, os, signal, sys, time
argv = sys.argv[1:]
ids = [a.split("=", 1)[1] for a in argv if a.startswith("--process_id=")]
name = ids[0] if ids else os.environ.get("SLURM_PROCID", os.path.basename(os.environ["HOME"]))
mode = os.environ.get("FAKE_MODE", "exit")
received = []
def record():
    environment = {{k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA", "SLURM"))}}
    path = os.path.join(os.environ["FAKE_RECORDS"], name + ".json")
    with open(path + ".partial", "w") as file:  # renamed whole: a reader never sees half of it
        json.dump({{"argv": argv, "cwd": os.getcwd(), "env": environment,
                   "signals": received}}, file)
    os.replace(path + ".partial", path)
def stop(signum, frame):
    received.append(signum)
    record()
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore_sigterm" else stop)
record()
print(f"process {{name}} started", flush=True)
if mode == "exit" or (mode in ("fail_1", "ignore_sigterm") and name == "1"):
    sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
for _ in range(1200):
    if received:
        time.sleep(0.5)
        sys.exit(128 + received[0])
    time.sleep(0.05)
"""

# A TPU VM slice of two workers, each a folder under $FAKE_CLOUD; every call is logged.
FAKE_GCLOUD = """#!{python}
import json, os, shutil, subprocess, sys
from pathlib import Path
cloud = Path(os.environ["FAKE_CLOUD"])
args = sys.argv[1:]
with open(cloud / "calls.jsonl", "a") as file:
    file.write(json.dumps(args) + "\\n")
assert args[:3] == ["compute", "tpus", "tpu-vm"], args
verb, rest = args[3], args[4:]
options = dict(a[2:].split("=", 1) for a in rest if a.startswith("--"))
positional = [a for a in rest if not a.startswith("--")]
workers = [cloud / "worker_0", cloud / "worker_1"]
if verb == "describe":
    if not (cloud / "type").exists():
        sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND")
    print((cloud / "type").read_text())
elif verb == "create":
    (cloud / "type").write_text(options["accelerator-type"])
    for worker in workers:
        # The image's tools the install step would download: a venv's python and uv.
        (worker / "crate_jax_venv/bin").mkdir(parents=True)
        (worker / "crate_jax_venv/bin/python").symlink_to(os.environ["FAKE_PYTHON"])
        (worker / ".local/bin").mkdir(parents=True)
        (worker / ".local/bin/uv").write_text("#!/bin/sh\\necho uv \\"$@\\" >> ~/uv_calls\\n")
        (worker / ".local/bin/uv").chmod(0o755)
elif verb == "scp":
    source, target = positional
    for worker in workers:
        shutil.copy(source, worker / target.split(":", 1)[1])
elif verb == "ssh":
    chosen = workers if options["worker"] == "all" else [workers[int(options["worker"])]]
    shells = [subprocess.Popen(["bash", "-c", options["command"]], cwd=worker, env={{
        **os.environ, "HOME": str(worker), "FAKE_RECORDS": str(worker)}}) for worker in chosen]
    sys.exit(max(shell.wait() for shell in shells))
"""

# srun inside an allocation: the same argv once per task, each with its own SLURM_PROCID.
FAKE_SRUN = """#!{python}
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.path.join(os.environ["FAKE_RECORDS"], "srun.json"), "w") as file:
    json.dump(args, file)
command = args[next(i for i, a in enumerate(args) if not a.startswith("--")):]
tasks = [subprocess.Popen(command, env={{**os.environ, "SLURM_PROCID": str(task)}})
         for task in range(int(os.environ["SLURM_NTASKS"]))]
sys.exit(max(task.wait() for task in tasks))
"""

FAKE_SLURM_JOB = {"SLURM_JOB_ID": "12345", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_NNODES": "2",
                  "SLURM_NTASKS": "2", "SLURM_CPUS_PER_TASK": "16"}
# JAX's own port for a SLURM job: SLURM_JOB_ID % 4096 + 61440.
SLURM_COORDINATOR = "gpu01:61497"


def write_tool(folder: Path, name: str, template: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(template.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def fakes(tmp_path):
    """Stand-in cluster tools first on PATH, the fake python, and a folder for their records."""
    tools = tmp_path / "tools"
    records = tmp_path / "records"
    records.mkdir()
    cloud = tmp_path / "cloud"
    (cloud / "worker_0").mkdir(parents=True)
    (cloud / "worker_1").mkdir()
    python = write_tool(tools, "fake_python", FAKE_PYTHON)
    write_tool(tools, "gcloud", FAKE_GCLOUD)
    write_tool(tools, "srun", FAKE_SRUN)
    environment = {"PATH": f"{tools}:{os.environ['PATH']}", "CRATE_JAX_PYTHON": str(python),
                   "FAKE_PYTHON": str(python), "FAKE_RECORDS": str(records),
                   "FAKE_CLOUD": str(cloud), "TMPDIR": str(tmp_path)}
    return dict(environment=environment, records=records, cloud=cloud)


def launch(script: str, *args: str, environment: dict | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs a launch script with none of this machine's SLURM, crate_jax or JAX settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CRATE_JAX_"))}
    clean.pop("JAX_PLATFORMS", None)
    clean.pop("XLA_FLAGS", None)
    return subprocess.run([str(LAUNCH / script), *args], env={**clean, **(environment or {})},
                          capture_output=True, text=True, timeout=timeout)


def commands(output: str) -> list[list[str]]:
    """The printed commands (comments left out), split as a shell would split them."""
    return [shlex.split(line) for line in output.splitlines() if line and not line.startswith("#")]


def option(command: list[str], name: str) -> str:
    values = [word.split("=", 1)[1] for word in command if word.startswith(f"--{name}=")]
    assert len(values) == 1, (name, command)
    return values[0]


def contains(words: list[str], part: list[str]) -> bool:
    return any(words[i:i + len(part)] == part for i in range(len(words) - len(part) + 1))


def records(folder: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}


def wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_is_executable_parses_and_documents_itself(script):
    path = LAUNCH / script
    assert os.access(path, os.X_OK), f"chmod +x {path}"
    subprocess.run(["bash", "-n", str(path)], check=True)
    shown = launch(script, "--help")
    assert shown.returncode == 0, shown.stderr
    for section in ["Usage", "--dry-run", "Environment", "Example"]:
        assert section in shown.stdout, section


# --- local_multiprocess.sh ----------------------------------------------------------------------

def test_local_dry_run_prints_one_command_per_process_with_one_coordinator():
    result = launch("local_multiprocess.sh", "3", "--dry-run", "--devices-per-process", "2", "--",
                    *MAIN_ARGS, environment={"CRATE_JAX_PYTHON": "python3"})
    assert result.returncode == 0, result.stderr
    printed = commands(result.stdout)
    assert len(printed) == 3
    coordinators = set()
    for process, command in enumerate(printed):
        assert command[:3] == ["JAX_PLATFORMS=cpu",
                               "XLA_FLAGS=--xla_force_host_platform_device_count=2", "python3"]
        assert command[3:5 + len(MAIN_ARGS)] == ["-m", "crate_jax.main", *MAIN_ARGS]
        assert option(command, "num_processes") == "3"
        assert option(command, "process_id") == str(process)
        coordinators.add(option(command, "coordinator_address"))
    (coordinator,) = coordinators
    host, port = coordinator.split(":")
    assert host == "127.0.0.1" and 1024 <= int(port) < 65536, "a free port by default"
    assert f"crate_jax_{port}" in result.stdout, "where the other processes' logs go"


def test_local_run_streams_process_0_and_logs_the_others_outside_the_workdir(fakes, tmp_path):
    workdir = tmp_path / "workdir"
    log_dir = tmp_path / "logs"
    result = launch("local_multiprocess.sh", "3", "--port", "47613", "--log-dir", str(log_dir),
                    "--", f"--workdir={workdir}", MAIN_ARGS[2], environment=fakes["environment"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "process 0 started\n"
    assert [path.name for path in sorted(log_dir.iterdir())] == ["process_1.log", "process_2.log"]
    assert (log_dir / "process_2.log").read_text() == "process 2 started\n"
    assert not workdir.exists(), "only process 0 (crate_jax.main itself) writes in the workdir"
    started = records(fakes["records"])
    for process in range(3):
        assert started[str(process)]["argv"] == [
            "-m", "crate_jax.main", f"--workdir={workdir}", MAIN_ARGS[2],
            "--coordinator_address=127.0.0.1:47613", "--num_processes=3", f"--process_id={process}"]
        assert started[str(process)]["env"]["JAX_PLATFORMS"] == "cpu"


def test_local_run_stops_the_others_when_one_fails_and_returns_its_code(fakes):
    start = time.monotonic()
    result = launch("local_multiprocess.sh", "3", "--port", "47614", "--", "--workdir=x",
                    environment={**fakes["environment"], "FAKE_MODE": "fail_1", "FAKE_EXIT": "3"})
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - start < 15, "the others would have slept for a minute"
    assert "process 1 exited with code 3" in result.stderr
    assert "process 1 started" in result.stderr, "the end of the failed process's log"
    stopped = records(fakes["records"])
    assert stopped["0"]["signals"] == stopped["2"]["signals"] == [signal.SIGTERM]


def test_local_run_kills_a_process_that_does_not_stop_on_sigterm(fakes):
    start = time.monotonic()
    result = launch("local_multiprocess.sh", "3", "--port", "47615", "--", "--workdir=x",
                    environment={**fakes["environment"], "FAKE_MODE": "ignore_sigterm",
                                 "FAKE_EXIT": "5", "CRATE_JAX_KILL_AFTER_S": "1"})
    assert result.returncode == 5, result.stderr
    assert time.monotonic() - start < 15
    assert "sending SIGKILL" in result.stderr


# Execs its arguments with SIGINT and SIGTERM at their defaults (exec keeps them so).
_WITH_DEFAULT_SIGNALS = ("import os, signal, sys\n"
                         "for signum in (signal.SIGINT, signal.SIGTERM):\n"
                         "    signal.signal(signum, signal.SIG_DFL)\n"
                         "os.execv(sys.argv[1], sys.argv[1:])\n")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_local_run_forwards_a_signal_once_to_every_process(fakes, signum):
    """Sent to the launcher's whole process group, as Ctrl-C at a terminal is: each process still
    gets it once (a second Ctrl-C would mean "stop without saving" to many programs)."""
    # Started as from a terminal, where Ctrl-C is not ignored: a test run in the background of a
    # non-interactive shell (`nohup ... &`) inherits SIGINT ignored, which no shell can trap.
    launcher = subprocess.Popen(
        [sys.executable, "-c", _WITH_DEFAULT_SIGNALS,
         str(LAUNCH / "local_multiprocess.sh"), "3", "--port", "47616", "--", "--workdir=x"],
        env={**os.environ, **fakes["environment"], "FAKE_MODE": "wait"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: len(records(fakes["records"])) == 3)
    os.killpg(launcher.pid, signum)
    stdout, stderr = launcher.communicate(timeout=20)
    assert launcher.returncode == 128 + signum, stderr
    assert [record["signals"] for record in records(fakes["records"]).values()] == [[signum]] * 3


@pytest.mark.parametrize("arguments", [[], ["0", "--", "x"], ["-2", "--", "x"], ["two", "--", "x"],
                                       ["2", "--config=x"], ["2", "--port", "p", "--", "x"],
                                       ["2"]])
def test_local_bad_arguments_are_one_line(arguments):
    result = launch("local_multiprocess.sh", *arguments)
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr


# --- gpu_slurm.sbatch ---------------------------------------------------------------------------

def test_slurm_dry_run_names_the_first_node_as_coordinator_and_each_task_id():
    result = launch("gpu_slurm.sbatch", "--dry-run", "--", *MAIN_ARGS,
                    environment={**FAKE_SLURM_JOB, "CRATE_JAX_PYTHON": "python3"})
    assert result.returncode == 0, result.stderr
    srun, *tasks = commands(result.stdout)
    assert srun[:3] == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=16"]
    assert srun[3:5] == ["bash", "-c"] and srun[6:] == ["crate_jax", *MAIN_ARGS]
    task_script = shlex.split(srun[5])
    assert task_script == ["exec", "python3", "-m", "crate_jax.main", "$@",
                           f"--coordinator_address={SLURM_COORDINATOR}", "--num_processes=2",
                           "--process_id=$SLURM_PROCID"]
    assert tasks == [["python3", "-m", "crate_jax.main", *MAIN_ARGS,
                      f"--coordinator_address={SLURM_COORDINATOR}", "--num_processes=2",
                      f"--process_id={task}"] for task in range(2)]
    # The same through the environment variable a batch system can set, and with a chosen port.
    again = launch("gpu_slurm.sbatch", "--port", "23456", "--", *MAIN_ARGS,
                   environment={**FAKE_SLURM_JOB, "CRATE_JAX_DRY_RUN": "1"})
    assert "--coordinator_address=gpu01:23456" in again.stdout


def test_slurm_runs_each_task_with_its_own_process_id_and_the_arguments_intact(fakes):
    result = launch("gpu_slurm.sbatch", "--", *MAIN_ARGS,
                    environment={**fakes["environment"], **FAKE_SLURM_JOB})
    assert result.returncode == 0, result.stderr
    dry = launch("gpu_slurm.sbatch", "--dry-run", "--", *MAIN_ARGS,
                 environment={**fakes["environment"], **FAKE_SLURM_JOB})
    started = records(fakes["records"])
    assert started.pop("srun") == commands(dry.stdout)[0][1:], "it runs what its dry run prints"
    assert [started[str(task)]["argv"] for task in range(2)] == [
        commands(dry.stdout)[1 + task][1:] for task in range(2)]


@pytest.mark.parametrize("nodelist, first", [("gpu01", "gpu01"), ("gpu[07,09-12],cpu1", "gpu07"),
                                             ("rack[2-3]-gpu[5,6]", "rack2-gpu5"), ("a,b", "a")])
def test_slurm_coordinator_is_the_first_host_of_any_node_list(nodelist, first):
    result = launch("gpu_slurm.sbatch", "--dry-run", "--", "--workdir=x",
                    environment={**FAKE_SLURM_JOB, "SLURM_JOB_NODELIST": nodelist})
    assert f"--coordinator_address={first}:61497" in result.stdout, result.stderr


def test_slurm_outside_a_job_or_without_main_arguments_is_one_line():
    for arguments, environment in [(["--", "--workdir=x"], {}), (["--dry-run"], FAKE_SLURM_JOB),
                                   (["--workdir=x"], FAKE_SLURM_JOB)]:
        result = launch("gpu_slurm.sbatch", *arguments, environment=environment)
        assert result.returncode == 2
        assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr


# --- tpu_pod.sh ---------------------------------------------------------------------------------

TPU = ["--name", "crate-v4", "--zone", "us-central2-b", "--accelerator-type", "v4-32"]


def remote_command(command: list[str]) -> list[str]:
    """The words the worker's shell sees in a `gcloud ... ssh --command=...`."""
    return shlex.split(option(command, "command"))


def test_tpu_dry_run_prints_every_gcloud_command_and_runs_none(fakes):
    result = launch("tpu_pod.sh", *TPU, "--project", "my-project", "--dry-run", "--", *MAIN_ARGS,
                    environment=fakes["environment"])
    assert result.returncode == 0, result.stderr
    assert not (fakes["cloud"] / "calls.jsonl").exists(), "a dry run called gcloud"
    describe, create, pack, scp, install, start, follow = commands(result.stdout)
    where = ["--zone=us-central2-b", "--project=my-project"]
    tpu_vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert describe == [*tpu_vm, "describe", "crate-v4", *where, "--format=value(acceleratorType)"]
    assert create == [*tpu_vm, "create", "crate-v4", *where, "--accelerator-type=v4-32",
                      "--version=tpu-ubuntu2204-base"]
    assert pack[:3] == ["git", "-C", str(REPO)] and "tar" in pack
    archive = pack[pack.index("-czf") + 1]
    assert scp == [*tpu_vm, "scp", archive, "crate-v4:crate_jax.tar.gz", *where, "--worker=all"]
    assert install[:6] == [*tpu_vm, "ssh", "crate-v4"] and "--worker=all" in install
    assert "jax[tpu]" in remote_command(install) and "~/crate_jax" in remote_command(install)
    assert start[:6] == [*tpu_vm, "ssh", "crate-v4"] and "--worker=all" in start
    assert contains(remote_command(start), ["crate_jax", *MAIN_ARGS]), "main arguments intact"
    assert follow[:6] == [*tpu_vm, "ssh", "crate-v4"] and "--worker=0" in follow
    assert "tail -n +1 --pid=$! -f ~/crate_jax_run.log" in option(follow, "command")
    # From a git URL, the workers clone it instead of receiving a copy.
    cloned = launch("tpu_pod.sh", *TPU, "--repo", "https://example.com/crate_jax.git",
                    "--dry-run", "--", *MAIN_ARGS, environment=fakes["environment"])
    assert "scp" not in cloned.stdout
    assert "git clone --quiet --depth=1 https://example.com/crate_jax.git" in cloned.stdout


def git_checkout(folder: Path) -> Path:
    folder.mkdir()
    (folder / ".gitignore").write_text("runs/\n")
    (folder / "tracked.py").write_text("committed\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(folder)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    (folder / "untracked.py").write_text("new\n")
    (folder / "runs").mkdir()
    (folder / "runs" / "big.bin").write_text("ignored\n")
    return folder


def test_tpu_run_does_what_its_dry_run_prints_on_every_worker(fakes, tmp_path):
    checkout = git_checkout(tmp_path / "checkout")
    arguments = [*TPU, "--repo", str(checkout), "--", *MAIN_ARGS]
    dry = launch("tpu_pod.sh", "--dry-run", *arguments, environment=fakes["environment"])
    result = launch("tpu_pod.sh", *arguments,
                    environment={**fakes["environment"], "FAKE_EXIT": "7"})
    assert result.returncode == 7, "worker 0's exit code"
    assert "process worker_0 started" in result.stdout, "worker 0's log, streamed"
    calls = [json.loads(line) for line in (fakes["cloud"] / "calls.jsonl").read_text().splitlines()]
    printed = [command[1:] for command in commands(dry.stdout) if command[0] == "gcloud"]
    assert calls == printed, "the slice did not exist, so every printed gcloud command ran"
    for worker in ["worker_0", "worker_1"]:
        home = fakes["cloud"] / worker
        copied = sorted(path.name for path in (home / "crate_jax").iterdir())
        assert copied == [".gitignore", "tracked.py", "untracked.py"], "not the ignored runs/"
        started = records(home)[worker]
        assert started["argv"] == ["-m", "crate_jax.main", *MAIN_ARGS]
        assert started["cwd"] == str(home / "crate_jax")
        assert (home / "crate_jax_run.exit").read_text() == "7\n"
        assert "pip install" in (home / "uv_calls").read_text()
    assert not list(tmp_path.glob("crate_jax_source_*")), "the archive is removed after the copy"


def test_tpu_stop_command_lets_every_worker_save_and_reports_the_signal(fakes, tmp_path):
    run = subprocess.Popen([str(LAUNCH / "tpu_pod.sh"), *TPU, "--repo", str(git_checkout(
        tmp_path / "checkout")), "--", "--workdir=x"], env={**os.environ, **fakes["environment"],
                                                            "FAKE_MODE": "wait"},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [fakes["cloud"] / "worker_0", fakes["cloud"] / "worker_1"]
    wait_for(lambda: all(records(home) for home in workers))
    # A second launch on the running slice is refused by every worker before it touches the
    # running copy.
    again = launch("tpu_pod.sh", *TPU, "--reuse", "--repo", str(tmp_path / "checkout"), "--",
                   "--workdir=y", environment=fakes["environment"])
    assert again.returncode != 0 and again.stderr.count("still going") == 2, again.stderr
    stop_line = next(line for line in iter(run.stderr.readline, "") if "to stop the run" in line)
    stop = shlex.split(stop_line.split(": ", 2)[2])
    subprocess.run(stop, env={**os.environ, **fakes["environment"]}, check=True, timeout=20)
    stdout, stderr = run.communicate(timeout=20)
    assert run.returncode == 128 + signal.SIGTERM, stderr
    for home in workers:
        assert records(home)[home.name]["signals"] == [signal.SIGTERM]
        assert (home / "crate_jax_run.exit").read_text() == "143\n"


def test_tpu_an_existing_slice_needs_reuse_and_the_same_type(fakes):
    (fakes["cloud"] / "type").write_text("v4-32")
    refused = launch("tpu_pod.sh", *TPU, "--", "--workdir=x", environment=fakes["environment"])
    assert refused.returncode == 2 and "--reuse" in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    other = [*TPU[:-1], "v4-8"]
    mismatch = launch("tpu_pod.sh", *other, "--reuse", "--", "--workdir=x",
                      environment=fakes["environment"])
    assert mismatch.returncode == 2 and "is a v4-32, not a v4-8" in mismatch.stderr
    calls = [json.loads(line)[3]
             for line in (fakes["cloud"] / "calls.jsonl").read_text().splitlines()]
    assert calls == ["describe", "describe"], "nothing created, copied or started"


@pytest.mark.parametrize("drop", ["--name", "--zone", "--accelerator-type"])
def test_tpu_missing_arguments_are_one_line(drop):
    arguments = list(TPU)
    del arguments[arguments.index(drop):arguments.index(drop) + 2]
    result = launch("tpu_pod.sh", *arguments, "--dry-run", "--", "--workdir=x")
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert f"{drop} is required" in result.stderr
