"""One writer per workdir: an exclusive lock that a run (or a study) holds for its whole life.

Two processes on one workdir (a double submit, an overlapping job requeue) would both append to
`metrics.jsonl` and `scores.jsonl` and both write checkpoints. The lock is the operating system's
(`fcntl.flock` on `<workdir>/.lock`): it belongs to the open file, so it dies with the process,
however it dies (kill -9 included), and nothing stale is ever left to clean up. The holder writes
its host, pid and start time into the file, so the process that is refused can name it.

File systems: local ones, and NFS v4 (where the client maps `flock` to a byte-range lock the
server arbitrates), lock across machines; Lustre needs its `flock` mount option, and a file
system that cannot lock at all is refused with a `WorkdirError` that says so, rather than run
unguarded. In a multi-process job only process 0 takes the lock: the job is one writer.

Taking the lock also removes the temporary files that killed writers left in the workdir
(`atomic_files.remove_stale_temporaries`), said in one line: as the one writer, the holder knows
they are garbage. (A writer of a workdir nested in this one, alive on another host of a shared
file system, is the case it cannot see; run nested workdirs from one host.)
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import socket
from collections.abc import Iterator

from crate_jax.atomic_files import remove_stale_temporaries
from crate_jax.layout import lock_file


class WorkdirInUse(RuntimeError):
    """Another process holds the workdir; the message names it (host, pid, since when)."""


@contextlib.contextmanager
def hold_workdir(workdir: str | os.PathLike[str], *, enabled: bool = True) -> Iterator[None]:
    """Holds `workdir`'s lock for the `with` block; raises `WorkdirInUse` at once (never
    waits) if another process holds it. `enabled=False` (processes other than 0 of a job) takes
    no lock. The workdir must exist."""
    if not enabled:
        yield
        return
    with open(lock_file(workdir), "a+") as file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                file.seek(0)
                holder = file.read().strip() or "another process (it has not said which yet)"
                raise WorkdirInUse(
                    f"--workdir={workdir} is in use by {holder}; two writers would duplicate "
                    "its records. Wait for that run to finish (or stop it), or give another "
                    "--workdir") from None
            raise WorkdirInUse(
                f"--workdir={workdir}: its file system cannot lock files ({error.strerror}), so "
                "a second run on it could not be refused; use a local disk or NFS v4 (Lustre: "
                "mount with -o flock)") from None
        file.seek(0)
        file.truncate()
        started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        file.write(f"pid {os.getpid()} on host {socket.gethostname()} (since {started})\n")
        file.flush()
        removed = remove_stale_temporaries(workdir)
        if removed:
            shown = ", ".join(str(path.relative_to(workdir)) for path in removed[:3])
            more = f" and {len(removed) - 3} more" if len(removed) > 3 else ""
            print(f"removed {len(removed)} temporary file(s) a stopped run left in {workdir}: "
                  f"{shown}{more}", flush=True)
        try:
            yield
        finally:
            file.seek(0)
            file.truncate()  # the lock itself goes with the file's closing
