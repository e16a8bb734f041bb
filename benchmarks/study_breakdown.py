"""Where a study's wall time goes: the default study (or a slice of it), stage by stage.

    python benchmarks/study_breakdown.py --config=configs/ablation.py:full --config.study.seeds=0 \
        --workdir=/tmp/breakdown

Runs a study config (`--config` and its `--config.<key>=<value>` overrides, as the main entry
point takes them) through the study stage as `python -m crate_jax.main` does
(`crate_jax.study.run_study`, from an empty `--workdir`), one run at a time in this process
(`study.workers=1`), with wall-clock timers around the functions that do the work: the stages
the study calls per run (train, SAEs, interp, the untrained control's initial state), the parts
of each (reference losses, evaluation, checkpoint writes; record mining, explanation,
simulation and scoring, ground truth) and the report. XLA compilation is read from JAX's own
monitoring events (tracing, lowering, backend compile; loads from the persistent cache), so it
is counted once, inside whichever stage compiled. Nothing is changed but the clock: the study's
results are the study's.

Prints a markdown table: per phase, seconds in all, calls and the share of the whole (nested
phases indented under the stage they belong to), and, where a phase raised the process's peak
resident memory, the peak it raised it to. `--json_out` also writes it.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # before the imports: they are part of what a user waits for

import collections  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from absl import app, flags  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import jax  # noqa: E402

import crate_jax.interp.evaluate  # noqa: E402
import crate_jax.study  # noqa: E402
import crate_jax.train.loop  # noqa: E402
from crate_jax.cli import define_config_flag, parse_flags  # noqa: E402
from crate_jax.process_memory import peak_memory_bytes  # noqa: E402
from crate_jax.train.checkpoints import Checkpointer  # noqa: E402
from crate_jax.versions import package_versions  # noqa: E402

_IMPORTED = time.perf_counter()

_CONFIG = define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "An empty folder for the study.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the breakdown here.")
flags.mark_flags_as_required(["config", "workdir"])

# (module, function name, phase): each phase a function the study reaches through that module.
# A phase inside another is named "<outer>/<inner>".
_TIMED = (
    (crate_jax.study, "prepare_token_arrays", "data"),
    (crate_jax.study, "train_and_evaluate", "train"),
    (crate_jax.train.loop, "reference_losses", "train/reference losses"),
    (crate_jax.train.loop, "_restore_or_initialize", "train/initial state"),
    (crate_jax.study, "fit_saes", "sae"),
    (crate_jax.study, "save_initial_state", "control init"),
    (crate_jax.study, "evaluate_interpretability", "interp"),
    (crate_jax.interp.evaluate, "mine_records", "interp/mining records"),
    (crate_jax.interp.evaluate, "explain_layer", "interp/explaining"),
    (crate_jax.interp.evaluate, "score_layer", "interp/simulating and scoring"),
    (crate_jax.interp.evaluate, "planted_ground_truth", "interp/ground truth"),
    (crate_jax.study, "write_study_report", "report"),
)
# JAX's monitoring events of compilation (jax/_src/dispatch.py), summed per phase.
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


class Clock:
    """Seconds per phase, and the phase that is running (for compile events)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self.running: list[str] = []
        # The process's peak resident memory where a phase raised it: which stage sets the
        # study's peak (the manifest's `peak_memory_bytes`).
        self.raised_peak: dict[str, int] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        self.running.append(name)
        started, peak_before = time.perf_counter(), peak_memory_bytes()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started
            self.calls[name] += 1
            self.running.pop()
            peak = peak_memory_bytes()
            if peak > peak_before:
                self.raised_peak[name] = max(self.raised_peak.get(name, 0), peak)

    def wrap(self, function, name: str):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            with self.phase(name):
                return function(*args, **kwargs)
        return timed

    def wrap_factory(self, factory, name: str):
        """`factory` returns a jitted function; each call of that is timed to its result."""
        @functools.wraps(factory)
        def timed_factory(*args, **kwargs):
            function = factory(*args, **kwargs)

            def timed(*call_args):
                with self.phase(name):
                    return jax.block_until_ready(function(*call_args))
            return timed
        return timed_factory

    def on_event(self, event: str, seconds: float, **_) -> None:
        if event in _COMPILE_EVENTS:
            stage = self.running[0] if self.running else "outside any stage"
            self.seconds[f"{stage}/compile (XLA)"] += seconds
            if event == _COMPILE_EVENTS[-1]:
                self.calls[f"{stage}/compile (XLA)"] += 1


def install(clock: Clock) -> None:
    for module, name, phase in _TIMED:
        setattr(module, name, clock.wrap(getattr(module, name), phase))
    # The evaluation's step, each call waited for (its caller reads the loss at once anyway).
    crate_jax.train.loop.make_eval_step = clock.wrap_factory(crate_jax.train.loop.make_eval_step,
                                                             "train/evaluation")
    # Checkpoint writes: the save call and the wait for in-flight saves when a run's
    # checkpointer closes.
    Checkpointer.save = clock.wrap(Checkpointer.save, "train/checkpoint writes")
    Checkpointer.__exit__ = clock.wrap(Checkpointer.__exit__, "train/checkpoint writes")
    jax.monitoring.register_event_duration_secs_listener(clock.on_event)


def rows(clock: Clock, total: float, imports: float, runs: int, controls: int) -> list[dict]:
    """One row per phase, stages in the order a run meets them, parts under their stage."""
    seconds = {"imports": imports, **clock.seconds}
    stages = ["imports", *dict.fromkeys(phase for _, _, phase in _TIMED if "/" not in phase)]
    ordered = []
    for stage in stages:
        ordered.append(stage)
        ordered.extend(sorted(name for name in seconds if name.startswith(f"{stage}/")))
    ordered.extend(name for name in seconds if name not in ordered)
    accounted = sum(seconds[name] for name in seconds if "/" not in name)
    result = [{"phase": name, "seconds": seconds[name], "calls": clock.calls.get(name, 1),
               "share": seconds[name] / total, "raised_peak_to": clock.raised_peak.get(name)}
              for name in ordered if name in seconds]
    result.append({"phase": "other (study bookkeeping, locks, copies)",
                   "seconds": total - accounted, "calls": 1, "share": (total - accounted) / total,
                   "raised_peak_to": None})
    result.append({"phase": f"total ({runs} runs, {controls} controls)", "seconds": total,
                   "calls": 1, "share": 1.0, "raised_peak_to": peak_memory_bytes()})
    return result


def markdown(table: list[dict]) -> str:
    lines = ["| phase | seconds | calls | share | raised peak memory to |",
             "|---|---:|---:|---:|---:|"]
    for row in table:
        depth = row["phase"].count("/")
        name = ("&nbsp;&nbsp;&nbsp;" * depth) + row["phase"].split("/")[-1]
        peak = "" if row["raised_peak_to"] is None else f"{row['raised_peak_to'] / 1e9:.2f} GB"
        lines.append(f"| {name} | {row['seconds']:,.1f} | {row['calls']} "
                     f"| {100 * row['share']:.1f}% | {peak} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    workdir = Path(_WORKDIR.value)
    if workdir.exists() and any(workdir.iterdir()):
        raise app.UsageError(f"--workdir={workdir} is not empty: the breakdown is of a study "
                             "from nothing")
    config = _CONFIG.value
    if "study" not in config:
        raise app.UsageError("--config names no study (a config with `study` settings, such as "
                             "configs/ablation.py)")
    # The timers are in this process: the study's runs must be too, one at a time (a study's
    # workers, `study.workers`, would run them where no timer is).
    config.study.workers = 1
    clock = Clock()
    install(clock)
    started = time.perf_counter()
    manifest = crate_jax.study.run_study(config, workdir)
    total = time.perf_counter() - started + (_IMPORTED - _STARTED)
    table = rows(clock, total, _IMPORTED - _STARTED, len(manifest["runs"]),
                 len(manifest["controls"]))
    print(markdown(table), flush=True)
    if _JSON_OUT.value:
        record = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "command": " ".join(["python", *sys.argv]), "cpu_count": os.cpu_count(),
                  "load_average_at_end": list(os.getloadavg()),
                  "peak_memory_bytes": peak_memory_bytes(),
                  "versions": package_versions(), "variants": config.study.variants,
                  "seeds": config.study.seeds, "phases": table}
        Path(_JSON_OUT.value).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
