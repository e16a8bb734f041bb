"""Files that are whole or absent: written under a temporary name beside the final one, then
renamed into place.

A run killed mid-write (kill -9, a full disk) leaves the old file or the new one, never half of
one, so a rerun that takes a file's presence as "this step finished" (tokens.json, sparsity.json)
never builds on a torn file. `os.replace` is atomic only within one filesystem, hence the
temporary file in the target's own folder; its name starts with a dot and ends in `.tmp`, so no
reader's glob picks it up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write, with any library (tokenizers'
    `save`, `np.savez` on an open file, ...).

    When the block ends, the file is synced to disk and renamed to `path`, keeping the
    permissions of a file already there; when the block raises, it is removed.
    """
    path = Path(path)
    temporary = path.with_name(_temporary_name(path.name, os.getpid()))
    try:
        yield temporary
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        if path.exists():
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomically(path: str | os.PathLike, value: Any) -> None:
    """`value` as JSON with `indent=2, sort_keys=True`, the form of every JSON file of a run."""
    write_text_atomically(path, json.dumps(value, indent=2, sort_keys=True))


def move_aside(path: str | os.PathLike, numbered: Callable[[int], Path]) -> Path:
    """Renames `path` to the first of `numbered(1)`, `numbered(2)`, ... that does not exist, and
    returns it: outputs that can no longer be trusted are kept for the user, never deleted."""
    number = 1
    while numbered(number).exists():
        number += 1
    os.replace(path, numbered(number))
    return numbered(number)


def _temporary_name(name: str, pid: int) -> str:
    return f".{name}.{pid}.tmp"


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Removes the temporary files under `directory` that a killed process left (kill -9, a
    full disk) and returns them; a process still alive on this host keeps its own (it may be
    writing a workdir nested in this one).

    Safe only while this process is the directory's one writer (`workdir_lock.hold_workdir`):
    then no temporary of another live writer can be there, so every leftover is garbage.
    """
    removed = []
    for path in sorted(Path(directory).rglob(".*.tmp")):
        match = _TEMPORARY.match(path.name)
        if match is None or not path.is_file() or _is_alive(int(match.group(1))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
