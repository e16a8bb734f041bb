"""The format of a run's `metrics.jsonl`, and its one reader.

One JSON object a line, in write order:

    {"step": 10, "split": "train", "time": 1.7e9, "loss": 3.2}

`step`, `split` and `time` are in every record (`RESERVED_KEYS`); the other keys are metrics.
JSON has no NaN or infinity, so non-finite metric values are written as the strings "nan",
"inf" and "-inf" (keeping which one it was, unlike null) and `read_metrics` turns them back into
floats. The file is appended to and flushed record by record, so a crash mid-write can leave a
truncated last line: readers skip it.

Written by `crate_jax.train.metrics.MetricsWriter`; read here by whoever needs the records (the
report, the input checks, notebooks), so reading a run's metrics never imports the training code.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from crate_jax.layout import METRICS_FILENAME, RunLayout

# Keys every record carries; a metric with one of these names would overwrite it.
RESERVED_KEYS = ("step", "split", "time")

_NON_FINITE_AS_STRING = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class MetricsError(ValueError):
    """`metrics.jsonl` is damaged other than by a crash mid-write; names the line to repair."""


def json_number(value: int | float) -> int | float | str:
    """`value` as something `json.dumps(allow_nan=False)` accepts: non-finite floats to the
    strings "nan", "inf", "-inf" (undone by `read_metrics`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _decode_non_finite(record: dict[str, Any]) -> dict[str, Any]:
    """Undo `json_number`: metric values "nan"/"inf"/"-inf" back to floats."""
    return {key: _NON_FINITE_AS_STRING.get(value, value)
            if key not in RESERVED_KEYS and isinstance(value, str) else value
            for key, value in record.items()}


def read_complete_lines(path: Path) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """The file's text and its complete records as `(raw line, parsed object)` pairs.

    A last line that does not parse is what a crash in the middle of a write leaves, and is
    skipped. An unparseable line anywhere else means the file was damaged some other way, so it
    raises `MetricsError` instead of silently losing data.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        number = path.read_bytes().count(b"\n", 0, error.start) + 1
        raise MetricsError(f"{path}:{number} is not UTF-8 text; delete or repair that line, "
                           "then rerun.") from None
    lines = [(number, line) for number, line in enumerate(text.split("\n"), start=1)
             if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if index == len(lines) - 1:
                break
            raise MetricsError(
                f"{path}:{number} is not valid JSON ({line[:80]!r}); only a truncated last line "
                "is tolerated. Delete or repair that line, then rerun.") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise MetricsError(
                f"{path}:{number} is not a metrics record (a JSON object with an integer 'step'): "
                f"{line[:80]!r}. Delete or repair that line, then rerun.")
        records.append((line, record))
    return text, records


def read_metrics(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record in `workdir/metrics.jsonl`, in write order, as dicts like
    `{"step": 10, "split": "train", "time": 1.7e9, "loss": 3.2}`.

    A truncated last line (a crash mid-write) is ignored; "nan"/"inf"/"-inf" strings come back
    as floats. Raises FileNotFoundError if the run never wrote metrics, `MetricsError` if a line
    other than the last is damaged.
    """
    path = RunLayout(workdir).metrics
    if not path.exists():
        raise FileNotFoundError(f"no {METRICS_FILENAME} in {workdir}; is that the run's workdir?")
    _, records = read_complete_lines(path)
    return [_decode_non_finite(record) for _, record in records]
