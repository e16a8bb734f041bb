"""Training and eval metrics, written to `metrics.jsonl` and to TensorBoard event files.

Layout under `workdir`:

    metrics.jsonl                      one JSON object per `write` (its format:
                                       `crate_jax.metrics_file`)
    tensorboard/<split>/events.out.tfevents.<time>.<host>.<pid>
                                       scalars tagged by metric name (written by tensorboardX),
                                       one directory per split so TensorBoard overlays train and
                                       eval curves as two runs

`metrics.jsonl` is the record the report code reads, with `crate_jax.metrics_file.read_metrics`
(the reader lives beside the workdir layout, not with the training code). It is flushed on every
write, so a crashed run keeps everything it logged. TensorBoard is for watching a run live:
its files are written in the background and reach the disk within `TENSORBOARD_FLUSH_SECONDS`.

In a multi-host run only one process (e.g. `jax.process_index() == 0`) should own a writer.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from crate_jax.atomic_files import write_text_atomically
from crate_jax.layout import TENSORBOARD_DIRNAME, RunLayout
from crate_jax.metrics_file import RESERVED_KEYS, json_number, read_complete_lines

if TYPE_CHECKING:  # imported when the first event file opens (`_summary_writer_class`)
    from tensorboardX import SummaryWriter

TENSORBOARD_FLUSH_SECONDS = 2

# A split names a directory, so keep it to characters that are safe in a path.
_SPLIT_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


def _metric_number(name: str, value: Any) -> int | float:
    """A metric value as a plain Python number; ints stay ints (e.g. a token count), anything
    else float-convertible (numpy/jax scalars, 0-d arrays) becomes a float."""
    if isinstance(value, numbers.Integral):
        return int(value)
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"metric {name!r} has value {value!r} of type {type(value).__name__}; metric values "
            "must be numbers or scalar arrays (use float(x) or x.item())") from error


def _summary_writer_class() -> type[SummaryWriter]:
    """tensorboardX's `SummaryWriter`, imported without PyTorch.

    Why: where torch is installed, tensorboardX imports it (optionally, to accept its tensors),
    and a process keeps the ~0.2 GB that costs for the rest of its life: a study worker's peak
    resident memory went from 0.86 to 0.67 GB in training (crate, planted tiny). We write
    floats only. A `None` in `sys.modules` makes that optional import fail while tensorboardX
    is imported, and is removed after; a torch already imported (a notebook's) is left alone.
    """
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _check_split(split: str) -> None:
    if not isinstance(split, str) or not _SPLIT_PATTERN.fullmatch(split) or split in (".", ".."):
        raise ValueError(
            f"split {split!r} is not a valid name: it becomes a directory under "
            f"{TENSORBOARD_DIRNAME}/, so use letters, digits, '_', '-' or '.' (e.g. 'eval')")


_event_files_opened: dict[Path, int] = {}


def _event_file_suffix(logdir: Path) -> str:
    """`.<pid>`, then `.<pid>.1`, `.<pid>.2`, ... for later writers of this process in `logdir`.

    tensorboardX names a file by the second it was opened and the host, and truncates one of that
    name: a run resumed in the same second by the same process (a notebook, a test) would lose
    the events its first writer logged.
    """
    logdir = logdir.resolve()
    opened = _event_files_opened.get(logdir, 0)
    _event_files_opened[logdir] = opened + 1
    return f".{os.getpid()}" + (f".{opened}" if opened else "")


class MetricsWriter:
    """Writes metrics to `workdir/metrics.jsonl` and TensorBoard; see the module docstring.

    Appends to an existing `metrics.jsonl`, so a resumed run continues the same file. Pass
    `resume_step` (the step of the checkpoint the run restarts from) to first drop the records
    with `step > resume_step`: the interrupted run logged them after its last checkpoint and the
    resumed run will log those steps again. A truncated last line is always dropped, so the first
    new record starts on a line of its own.

    Usable as a context manager; `close` is safe to call twice.
    """

    def __init__(self, workdir: str | os.PathLike[str], resume_step: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = RunLayout(self.workdir).metrics
        self.tensorboard_dir = RunLayout(self.workdir).tensorboard
        if self.metrics_path.exists():
            self._drop_stale_records(resume_step)
        self._jsonl = open(self.metrics_path, "a", encoding="utf-8")
        self._event_writers: dict[str, SummaryWriter] = {}

    def _drop_stale_records(self, resume_step: int | None) -> None:
        """Rewrite the file without a truncated last line, without a second record of a
        (split, step) (said in one line) and, if resuming, without the records past
        `resume_step`; leaves the file untouched when there is nothing to drop."""
        text, records = read_complete_lines(self.metrics_path)
        kept, seen, repeated = [], set(), 0
        for line, record in records:
            key = (record.get("split"), record["step"])
            if key in seen:
                repeated += 1
            elif resume_step is None or record["step"] <= resume_step:
                kept.append(line)
            seen.add(key)
        if repeated:  # a run writes each (split, step) once: two processes wrote this file
            print(f"{self.metrics_path} held {repeated} repeated records (two runs wrote this "
                  "workdir at once, before runs locked it); kept the first of each", flush=True)
        kept_text = "".join(line + "\n" for line in kept)
        if kept_text != text:
            write_text_atomically(self.metrics_path, kept_text)

    def write(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        """Record `metrics` (name -> number) at `step` for `split` ("train", "eval", ...)."""
        if self._jsonl.closed:
            raise ValueError(f"MetricsWriter for {self.workdir} is closed; create a new one")
        if not isinstance(step, numbers.Integral):
            raise TypeError(f"step must be an int, got {step!r} of type {type(step).__name__}")
        _check_split(split)
        values = {}
        for name, value in metrics.items():
            if not isinstance(name, str) or name in RESERVED_KEYS:
                raise ValueError(
                    f"metric name {name!r} is not allowed: names must be strings other than "
                    f"{', '.join(RESERVED_KEYS)} (those keys are in every record); rename it")
            values[name] = _metric_number(name, value)
        now = time.time()
        record = {"step": int(step), "split": split, "time": now}
        record.update({name: json_number(value) for name, value in values.items()})
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        if values:
            event_writer = self._event_writer(split)
            for name, value in values.items():
                event_writer.add_scalar(name, float(value), global_step=int(step), walltime=now)

    def _event_writer(self, split: str) -> SummaryWriter:
        """The split's event file, created on first use so unused splits leave no directory."""
        if split not in self._event_writers:
            self._event_writers[split] = _summary_writer_class()(
                str(self.tensorboard_dir / split), flush_secs=TENSORBOARD_FLUSH_SECONDS,
                filename_suffix=_event_file_suffix(self.tensorboard_dir / split))
        return self._event_writers[split]

    def close(self) -> None:
        self._jsonl.close()
        for event_writer in self._event_writers.values():
            event_writer.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
