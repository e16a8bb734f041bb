"""Metric writers: metrics.jsonl survives crashes and resumes; TensorBoard can read our events."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from crate_jax.layout import METRICS_FILENAME
from crate_jax.metrics_file import read_metrics
from crate_jax.train.metrics import MetricsWriter


def _reject_non_standard_json(constant: str) -> None:
    raise AssertionError(f"metrics.jsonl contains {constant}, which is not valid JSON")


def _strict_json_lines(workdir) -> list[dict]:
    text = (workdir / METRICS_FILENAME).read_text()
    return [json.loads(line, parse_constant=_reject_non_standard_json)
            for line in text.splitlines()]


def _steps(records: list[dict]) -> list[tuple[str, int]]:
    return [(record["split"], record["step"]) for record in records]


def test_jsonl_round_trip(tmp_path):
    workdir = tmp_path / "run"  # does not exist yet: the writer creates it
    with MetricsWriter(workdir) as writer:
        writer.write(10, {"loss": 3.25, "tokens_per_second": 1.2e4, "tokens_seen": 40960})
        writer.write(10, {"loss": 3.5}, split="eval")
        writer.write(np.int64(20), {"loss": np.float32(2.75)})
    records = read_metrics(workdir)
    assert _steps(records) == [("train", 10), ("eval", 10), ("train", 20)]
    assert list(records[0]) == ["step", "split", "time", "loss", "tokens_per_second",
                                "tokens_seen"]
    assert records[0]["loss"] == 3.25 and records[0]["tokens_per_second"] == 1.2e4
    assert records[0]["tokens_seen"] == 40960 and isinstance(records[0]["tokens_seen"], int)
    assert records[2]["loss"] == 2.75 and type(records[2]["step"]) is int
    assert all(abs(record["time"] - records[0]["time"]) < 60 for record in records)


def test_second_writer_appends(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": 1.0})
    with MetricsWriter(tmp_path) as writer:
        writer.write(2, {"loss": 0.5})
    assert _steps(read_metrics(tmp_path)) == [("train", 1), ("train", 2)]
    # Started in the same second by the same process: each writer keeps its own event file.
    event_files = list((tmp_path / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert len(event_files) == 2 and all(path.stat().st_size > 0 for path in event_files)


def test_resume_step_drops_records_after_the_checkpoint(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        for step in (10, 20, 30, 40):
            writer.write(step, {"loss": 1.0 / step})
        writer.write(20, {"loss": 0.07}, split="eval")
        writer.write(40, {"loss": 0.03}, split="eval")
    with MetricsWriter(tmp_path, resume_step=20) as writer:
        writer.write(30, {"loss": 0.01})
    assert _steps(read_metrics(tmp_path)) == [
        ("train", 10), ("train", 20), ("eval", 20), ("train", 30)]
    assert read_metrics(tmp_path)[-1]["loss"] == 0.01
    assert not list(tmp_path.glob(f".{METRICS_FILENAME}*")), "temp file left behind"


def test_records_two_writers_repeated_are_reported_and_kept_once(tmp_path, capsys):
    """Two processes on one workdir (before runs locked it) wrote every record twice; a rerun
    says so and keeps the first of each (split, step)."""
    for _ in range(2):
        with MetricsWriter(tmp_path) as writer:
            writer.write(10, {"loss": 1.0})
            writer.write(10, {"loss": 1.5}, split="validation")
    with MetricsWriter(tmp_path, resume_step=10):
        pass
    assert "held 2 repeated records (two runs wrote this workdir at once" in \
        capsys.readouterr().out
    assert _steps(read_metrics(tmp_path)) == [("train", 10), ("validation", 10)]


def test_truncated_last_line_is_ignored_and_dropped_before_appending(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": 1.0})
        writer.write(2, {"loss": 0.5})
    path = tmp_path / METRICS_FILENAME
    text = path.read_text()
    path.write_text(text[:-10])  # a crash in the middle of writing the step-2 line
    assert _steps(read_metrics(tmp_path)) == [("train", 1)]

    with MetricsWriter(tmp_path) as writer:
        writer.write(2, {"loss": 0.4})
    assert _steps(read_metrics(tmp_path)) == [("train", 1), ("train", 2)]
    assert read_metrics(tmp_path)[-1]["loss"] == 0.4


def test_damaged_line_before_the_end_raises(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": 1.0})
    path = tmp_path / METRICS_FILENAME
    path.write_text('{"step": 0, "lo\n' + path.read_text())
    with pytest.raises(ValueError, match=f"{METRICS_FILENAME}:1 is not valid JSON"):
        read_metrics(tmp_path)


def test_non_finite_values_are_valid_json_and_read_back_as_floats(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": math.nan, "grad_norm": math.inf, "log_scale": -np.inf})
    (line,) = _strict_json_lines(tmp_path)
    assert (line["loss"], line["grad_norm"], line["log_scale"]) == ("nan", "inf", "-inf")
    (record,) = read_metrics(tmp_path)
    assert math.isnan(record["loss"])
    assert record["grad_norm"] == math.inf and record["log_scale"] == -math.inf


def test_rejects_reserved_names_bad_splits_and_non_numbers(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="'step'"):
            writer.write(1, {"step": 1.0})
        with pytest.raises(ValueError, match="'../eval'"):
            writer.write(1, {"loss": 1.0}, split="../eval")
        with pytest.raises(TypeError, match="'loss'"):
            writer.write(1, {"loss": "low"})
    with pytest.raises(ValueError, match="closed"):
        writer.write(2, {"loss": 1.0})
    writer.close()  # closing twice is harmless
    assert read_metrics(tmp_path) == []


def test_missing_metrics_file_names_the_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_metrics(tmp_path)


def test_tensorboard_reads_scalars_for_two_splits(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    event_file_loader = pytest.importorskip(
        "tensorboard.backend.event_processing.event_file_loader")
    train = {10: {"loss": 3.2, "tokens_per_second": 1.25e4}, 20: {"loss": 2.9, "lr": 3e-4}}
    evals = {20: {"loss": 3.05, "accuracy": 0.41}}
    with MetricsWriter(tmp_path) as writer:
        for step, metrics in train.items():
            writer.write(step, metrics)
        for step, metrics in evals.items():
            writer.write(step, metrics, split="eval")
        writer.write(30, {"loss": math.nan})

    for split, logged in (("train", train), ("eval", evals)):
        (event_file,) = (tmp_path / "tensorboard" / split).glob("events.out.tfevents.*")
        events = list(event_file_loader.EventFileLoader(str(event_file)).Load())
        assert events[0].file_version == "brain.Event:2"
        values = sum(len(event.summary.value) for event in events)
        assert values == sum(map(len, logged.values())) + (split == "train")  # none lost

        accumulator = event_accumulator.EventAccumulator(str(event_file.parent))
        accumulator.Reload()
        tags = {tag for metrics in logged.values() for tag in metrics}
        assert set(accumulator.Tags()["scalars"]) == tags
        for tag in tags:
            expected = [(step, metrics[tag]) for step, metrics in logged.items()
                        if tag in metrics]
            scalars = accumulator.Scalars(tag)
            if split == "train" and tag == "loss":
                assert scalars[-1].step == 30 and math.isnan(scalars[-1].value)
                scalars = scalars[:-1]
            assert [event.step for event in scalars] == [step for step, _ in expected]
            np.testing.assert_array_equal(
                np.float32([event.value for event in scalars]),
                np.float32([value for _, value in expected]))


def test_event_files_do_not_import_torch(tmp_path):
    """tensorboardX imports torch where it is installed, ~0.2 GB a training process kept for
    its life; a fresh process writing event files through our writer must not, and a torch
    imported afterwards (a notebook's) still works."""
    pytest.importorskip("torch")
    script = (
        "import sys\n"
        "from crate_jax.train.metrics import MetricsWriter\n"
        f"with MetricsWriter({str(tmp_path)!r}) as writer:\n"
        "    writer.write(1, {'loss': 2.5})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "import torch\n"
        "print(float(torch.ones(2).sum()))\n")
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip() == "2.0"
    assert list((tmp_path / "tensorboard" / "train").glob("events.out.tfevents.*"))
