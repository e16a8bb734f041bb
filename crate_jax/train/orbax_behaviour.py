"""What orbax does beside saving and restoring, made fit for a command-line run: it logs only
warnings and errors, and a failed save or restore leaves nothing running that prints after the
`CheckpointError` that reports it (`quiet_orbax`, which `Checkpointer` calls)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any

# How long a failed orbax operation's other reads and writes get to finish before they are
# cancelled: a local disk answers in well under a second, an object store in a few.
SETTLE_SECONDS = 60.0


def quiet_orbax() -> None:
    """Drops orbax's chatter from the logs and settles its event loops after a failure (both
    once per process)."""
    _quiet_logs()
    _settle_event_loops()


def _settle_event_loops() -> None:
    """Makes orbax wait for a failed operation's other tasks before it closes their event loop.

    Orbax (0.12) runs each save, commit and restore as one coroutine in a fresh event loop
    (`asyncio_utils._run_sync_via_new_loop`) that is closed as soon as that coroutine ends. When
    one read of a corrupt checkpoint, or one write to a full disk, fails, `asyncio.gather` raises
    at once and the loop is closed under the other reads and writes: tensorstore, finishing
    them in its own threads, then calls the closed loop (one `RuntimeError: Event loop is
    closed` traceback each, up to hundreds), and their coroutines, destroyed unfinished, print
    `Exception ignored in: <coroutine ...>`, after the error was reported. Here a failed
    operation's loop first lets them finish (up to `SETTLE_SECONDS`, then cancels what is left),
    as orbax's own `AsyncRunner.shutdown` does; a successful one is closed as orbax closes it.
    Installed once; an orbax without that function keeps its own loops (and
    test_checkpoints.py's failed-restore test shows whether they need the same).
    """
    try:
        from orbax.checkpoint._src import asyncio_utils
    except ImportError:
        return
    if getattr(asyncio_utils, "_run_sync_via_new_loop", None) in (None, _run_in_settled_loop):
        return
    asyncio_utils._run_sync_via_new_loop = _run_in_settled_loop


def _run_in_settled_loop(coro: Coroutine) -> Any:
    """`coro`'s result, from a fresh event loop; when `coro` fails, the loop is closed only once
    no task is left on it."""
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(coro)
        except BaseException:
            _finish_other_tasks(loop)
            raise
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _finish_other_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Runs `loop` until the tasks a failed gather left behind have ended: waits `SETTLE_SECONDS`
    for them, then cancels the rest.

    Their errors are the failed operation's, reported through it, and must not be logged again
    as "Task exception was never retrieved": the callbacks that read them (the gather's) run
    once more before the loop closes, and the error of each task waited for is read here.
    """
    _run_ready_callbacks(loop)
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=SETTLE_SECONDS))
        late = [task for task in pending if not task.done()]
        for task in late:
            task.cancel()
        if late:
            loop.run_until_complete(asyncio.wait(late, timeout=SETTLE_SECONDS))
        _run_ready_callbacks(loop)
    for task in pending:
        if task.done() and not task.cancelled():
            task.exception()


def _run_ready_callbacks(loop: asyncio.AbstractEventLoop) -> None:
    """Runs the callbacks `loop` has queued: a loop stops before those its last step queued."""
    loop.run_until_complete(asyncio.sleep(0))


class _OrbaxLogFilter(logging.Filter):
    """Keeps orbax's warnings and errors, but drops its INFO/DEBUG records (dozens per save) and
    those that carry a traceback.

    Orbax logs one failed save with a traceback from each thread that saw it (hundreds of lines
    for a full disk) and hands the exception on to `save`, `wait` or `restore`, where it becomes
    one `CheckpointError` line naming the directory and the cause. The one failure it logs with a
    traceback without handing it on, an old checkpoint it could not delete, costs disk space only.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        return record.levelno >= logging.WARNING and record.exc_info is None


def _quiet_logs() -> None:
    # Orbax logs through absl, whose records reach the "absl" Python logger with the orbax
    # module as their pathname; once absl's flags are parsed its verbosity is INFO.
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxLogFilter) for f in absl_logger.filters):
        absl_logger.addFilter(_OrbaxLogFilter())
    logging.getLogger("orbax").setLevel(logging.WARNING)
