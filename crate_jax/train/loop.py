"""`train_and_evaluate(config, workdir)`: one variant, trained from scratch or resumed exactly.

Every artifact lands in `workdir`: token arrays and tokenizer (`data/`), the config and versions
(`config.json`, `run_info.json`), checkpoints (`checkpoints/`), metrics (`metrics.jsonl`,
`tensorboard/`). Rerunning the same command continues from the last checkpoint; SIGTERM or
Ctrl-C saves one before exiting; a non-finite loss stops the run without saving the bad state.

In a multi-process job (crate_jax/distributed.py) every process runs this same function: all of
them train, evaluate and take part in every checkpoint save; only process 0 writes the other
files; the data are prepared by process 0 first; and a stop happens at a step they all agree on.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from crate_jax.atomic_files import write_json_atomically, write_text_atomically
from crate_jax.data.references import reference_losses
from crate_jax.data.sampler import WindowSampler, evaluation_windows
from crate_jax.data.token_arrays import TokenArrays, prepare_token_arrays
from crate_jax.distributed import (
    is_main_process,
    local_digest,
    main_process_first,
    stop_agreed_at,
)
from crate_jax.layout import RunLayout
from crate_jax.model import model_from_config, model_identity
from crate_jax.train.checkpoints import Checkpointer, CheckpointError
from crate_jax.train.config_checks import check_train_config
from crate_jax.train.metrics import MetricsWriter
from crate_jax.train.optimizer import learning_rate_schedule, make_optimizer
from crate_jax.train.sharding import (
    batch_sharding,
    global_batch,
    make_mesh,
    state_shardings,
    train_batch_sharding,
)
from crate_jax.train.state import TrainState, abstract_train_state, initial_state
from crate_jax.train.step import make_eval_step, make_train_step
from crate_jax.versions import package_versions


class TrainingError(RuntimeError):
    """The run cannot go on (diverged loss, impossible batch layout); says why and what to do."""


def train_and_evaluate(config, workdir: str | Path) -> dict:
    """Trains `config`'s model in `workdir`; returns the final step's metrics.

    Returns `{"step", "status", "train_loss", "validation_loss", "validation_bits_per_byte",
    "initial_validation_loss"?}` where status is `completed` or `interrupted` (then `"signal"`
    names the signal that stopped it, after a checkpoint of the reported step was saved).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    train = config.train
    model = model_from_config(config)
    check_train_config(config)
    tokens = main_process_first(
        "token arrays", lambda: prepare_token_arrays(config.data, model.config.vocab_size, workdir))
    # Closing the checkpointer waits for in-flight saves, also when the loop raises.
    with Checkpointer(directory=RunLayout(workdir).checkpoints, save_every=train.checkpoint_every,
                      keep=train.keep_checkpoints) as checkpointer:
        return _train(config, workdir, model, tokens, checkpointer)


def save_initial_state(config, workdir: str | Path) -> None:
    """Saves step 0 of `config`'s run without training it: the untrained control a study
    explains beside each trained run (`study.controls`).

    The state comes from the very initialisation a training run starts from (same seed, same
    code, same sharding), so the control's parameters are that run's before its first update.
    A rerun finds the step-0 checkpoint and leaves it; a checkpoint of a later step means the
    workdir holds a trained model, which is refused rather than passed off as untrained.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = model_from_config(config)
    tokens = main_process_first(
        "token arrays", lambda: prepare_token_arrays(config.data, model.config.vocab_size, workdir))
    optimizer = make_optimizer(config.train)
    abstract_state = abstract_train_state(model, optimizer)
    with Checkpointer(directory=RunLayout(workdir).checkpoints,
                      save_every=config.train.checkpoint_every, keep=None) as checkpointer:
        latest = checkpointer.latest_step()
        if latest not in (None, 0):
            raise TrainingError(
                f"{checkpointer.directory} holds a checkpoint at step {latest}: not an untrained "
                "model; move that folder aside to make the untrained control there")
        state = _restore_or_initialize(checkpointer, config, model, optimizer, abstract_state,
                                       state_shardings(abstract_state, make_mesh(config.mesh)))
        _write_run_files(config, workdir, tokens)
        checkpointer.save(0, state.as_dict(), _checkpoint_meta(config, tokens, 0), force=True)


def _train(config, workdir: Path, model, tokens: TokenArrays,
           checkpointer: Checkpointer) -> dict:
    """The loop proper: restore or initialise, then step, log, evaluate and save."""
    train = config.train
    mesh = make_mesh(config.mesh)
    optimizer = make_optimizer(train)
    schedule = learning_rate_schedule(train)
    abstract_state = abstract_train_state(model, optimizer)
    state_sharding = state_shardings(abstract_state, mesh)
    state = _restore_or_initialize(checkpointer, config, model, optimizer, abstract_state,
                                   state_sharding)
    # Only now: a config that does not match the workdir's checkpoint has been refused above,
    # and must not overwrite the run's own record of what it is.
    _write_run_files(config, workdir, tokens)
    start_step = int(state.step)

    micro_batch = train.batch_size // train.grad_accum_steps
    sampler = WindowSampler(tokens.train, train.seq_len, train.batch_size, seed=config.seed,
                            process_index=jax.process_index(), process_count=jax.process_count())
    # The validation set is `eval_batches` global batches of windows, whatever the accumulation.
    eval_windows = _local_eval_windows(tokens, train.seq_len,
                                       train.eval_batches * train.batch_size, micro_batch)
    references = None
    is_main = is_main_process()
    if is_main:
        num_windows = jax.process_count() * sum(chunk.shape[0] for chunk in eval_windows)
        layout = RunLayout(workdir)
        references = reference_losses(tokens, layout.data_dir, num_windows, train.seq_len)
        write_json_atomically(layout.references, references)
    train_step = make_train_step(model, optimizer, schedule, mesh, state_sharding)
    eval_step = make_eval_step(model, mesh, state_sharding.params)
    batch_layout = (train.grad_accum_steps, micro_batch // jax.process_count(), train.seq_len + 1)

    def evaluate(params) -> dict:
        total = sum(float(eval_step(params, global_batch(chunk, batch_sharding(mesh))))
                    for chunk in eval_windows)
        loss = total / (jax.process_count() * sum(c.shape[0] for c in eval_windows)
                        * train.seq_len)
        return {"loss": loss,
                "bits_per_byte": loss / math.log(2) / tokens.bytes_per_token("validation")}

    summary = {"step": start_step, "status": "completed"}
    # A model imported at its own step (`crate_jax.convert`) is evaluated before it is trained
    # further, as a fresh run is: its loss on this text, beside the references.
    evaluate_first = start_step == 0 or "conversion" in checkpointer.meta(start_step)
    if start_step >= train.num_steps and not evaluate_first:
        _say(f"{workdir} already holds a finished run (step {start_step} of "
             f"train.num_steps={train.num_steps}); raise --config.train.num_steps to continue "
             "it, or use a new --workdir", is_main)
        return summary
    with _stop_on_signals(agreed=jax.process_count() > 1) as stop, \
            contextlib.ExitStack() as cleanup:
        # A fresh start (-1) drops metrics of any earlier run here; a resume keeps those <= its
        # step, an imported model's first run those before it (its evaluation is written again).
        # Other processes write none: the one record of the run is process 0's.
        kept_until = start_step - 1 if evaluate_first else start_step
        writer = (cleanup.enter_context(MetricsWriter(workdir, resume_step=kept_until))
                  if is_main else _NoMetrics())
        if evaluate_first:
            initial = evaluate(state.params)
            writer.write(start_step, initial, split="validation")
            summary["initial_validation_loss"] = initial["loss"]
            _say(f"step {start_step} | validation loss {initial['loss']:.4f} | "
                 f"{initial['bits_per_byte']:.4f} bits/byte{_against(references)}", is_main)
        if start_step >= train.num_steps:
            _say(f"the imported model at step {start_step} is evaluated; raise "
                 "--config.train.num_steps above it to fine-tune it", is_main)
            return summary
        progress = tqdm(total=train.num_steps, initial=start_step, unit="step",
                        disable=not (is_main and train.progress_bar), dynamic_ncols=True)
        cleanup.callback(progress.close)  # also on an error: its FATAL line starts a new line
        tokens_per_step = train.batch_size * train.seq_len
        interval_start, interval_steps, timing_from = time.perf_counter(), 0, start_step + 1
        step = start_step
        in_flight = _StepsInFlight(MAX_STEPS_IN_FLIGHT, done=start_step)
        stop.progress = in_flight.completed_step
        while step < train.num_steps:
            batch = sampler.batch(step).reshape(batch_layout)
            state, metrics = train_step(state, global_batch(batch, train_batch_sharding(mesh)))
            step += 1
            in_flight.admit(step, metrics)
            progress.update()
            if step == timing_from:  # exclude compilation from throughput
                jax.block_until_ready(metrics)
                interval_start, interval_steps = time.perf_counter(), 0
            else:
                interval_steps += 1
            is_last = step == train.num_steps
            # Read once: a signal that arrives during the metrics read or the evaluation below
            # is acted on at the next step, never between deciding to save and deciding to stop.
            stopping = stop.requested_at(step) and not is_last
            saving = is_last or stopping or step % train.checkpoint_every == 0
            on_schedule = step % train.log_every == 0 or is_last
            if on_schedule or saving:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not math.isfinite(values["loss"]):  # never save a diverged state
                    raise TrainingError(_divergence_message(values["loss"], step, checkpointer))
            # The record holds the steps the run logs or checkpoints on its schedule, so that a
            # stopped and resumed run's file equals the uninterrupted run's: a stop's own step
            # is saved, not logged.
            if on_schedule or (saving and not stopping):
                if interval_steps:
                    elapsed = time.perf_counter() - interval_start
                    values["tokens_per_second"] = interval_steps * tokens_per_step / elapsed
                    values["seconds_per_step"] = elapsed / interval_steps
                    interval_start, interval_steps = time.perf_counter(), 0
                writer.write(step, values)
                summary["train_loss"] = values["loss"]
                progress.set_postfix(loss=f"{values['loss']:.3f}",
                                     tok_s=f"{values.get('tokens_per_second', 0):,.0f}")
                if step % train.log_every == 0:
                    _say(_log_line(step, values), is_main, progress)
            if step % train.eval_every == 0 or is_last:
                evaluation = evaluate(state.params)
                writer.write(step, evaluation, split="validation")
                summary["validation_loss"] = evaluation["loss"]
                summary["validation_bits_per_byte"] = evaluation["bits_per_byte"]
                _say(f"step {step} | validation loss {evaluation['loss']:.4f} | "
                     f"{evaluation['bits_per_byte']:.4f} bits/byte{_against(references)}",
                     is_main, progress)
            if saving:
                checkpointer.save(step, state.as_dict(), _checkpoint_meta(config, tokens, step),
                                  force=True)
            if stopping:
                summary["status"] = "interrupted"
                summary["signal"] = stop.signal
                _say(f"stopped by signal at step {step}{stop.lag(step)}; checkpoint saved, "
                     "rerun the same command to resume", is_main, progress)
                break
        if stop.requested and summary["status"] != "interrupted":
            # Asked during the last step or the final evaluation and save: the run is complete
            # and saved, but the request stands; the stages after this one must not start.
            summary["status"] = "interrupted"
            summary["signal"] = stop.signal
            _say(f"stopped by signal at the last step ({step}); the run is complete and saved",
                 is_main, progress)
        progress.close()
        summary["step"] = step
    if jax.process_count() > 1:  # every process: replicas that drifted apart show here
        print(f"process {jax.process_index()}: step {step}, parameters sha256 "
              f"{local_digest(state.params)} (this process's part)", flush=True)
    return summary


def _restore_or_initialize(checkpointer: Checkpointer, config, model, optimizer, abstract_state,
                           state_sharding) -> TrainState:
    """Own checkpoint if there is one (resume), else a fresh initialisation from `config.seed`."""
    latest = checkpointer.latest_step()
    if latest is None:
        init = jax.jit(lambda: initial_state(model, optimizer, config.seed),
                       out_shardings=state_sharding)
        return init()
    target = jax.tree_util.tree_map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_state, state_sharding)
    # The settings first: another model's checkpoint is named by what differs, not by its arrays.
    meta = checkpointer.meta(latest)
    other_run, optimizer_changes = changed_settings(meta.get("config", {}), config.to_dict(),
                                                    drawn_batches="conversion" not in meta)
    if other_run:
        raise CheckpointError(
            f"the checkpoint at step {latest} in {checkpointer.directory} was trained with other "
            f"settings ({'; '.join(other_run)}); use a new --workdir for a new run (or move "
            "that checkpoints folder aside to start this one over)")
    if optimizer_changes:
        _say(f"resuming step {latest} with changed optimizer settings: "
             f"{'; '.join(optimizer_changes)}", is_main_process())
    restored, _ = checkpointer.restore(latest, target.as_dict())
    return TrainState.from_dict(restored)


# What a checkpoint's run is: its model, its seed and the batches it draws. A resumption under
# other values would be neither run, so it is refused. Other train keys may change on a resume:
# the optimizer's (the divergence message itself advises a lower learning rate), said in one
# line; how long the run goes on (`num_steps`, which also stretches the cosine schedule: that is
# what continuing a finished run means) and how it is watched, silently.
IDENTITY_TRAIN_KEYS = ("batch_size", "seq_len")
SILENT_TRAIN_KEYS = ("num_steps", "log_every", "eval_every", "eval_batches", "checkpoint_every",
                     "keep_checkpoints", "progress_bar", "grad_accum_steps")


def changed_settings(saved: dict, current: dict,
                     drawn_batches: bool = True) -> tuple[list[str], list[str]]:
    """(settings that make `saved`'s checkpoint another run, optimizer settings changed since),
    each as `key: saved there, current now`; both arguments are `config.to_dict()`s.

    Without `drawn_batches` (an imported model's checkpoint, `crate_jax.convert`: no batch was
    drawn here yet) only the model is the run's: fine-tuning chooses its seed and batches."""
    def differences(keys: list[tuple[str, object, object]]) -> list[str]:
        return [f"{key}: {old!r} there, {new!r} now" for key, old, new in keys if old != new]

    # Which model, not how it is computed: the same arrays resume under another kernel.
    old_model = model_identity(saved.get("model") or {})
    new_model = model_identity(current.get("model") or {})
    old_train, new_train = saved.get("train") or {}, current.get("train") or {}
    identity = [(f"model.{k}", old_model.get(k), new_model.get(k))
                for k in sorted(set(old_model) | set(new_model))]
    if drawn_batches:
        identity.insert(0, ("seed", saved.get("seed"), current.get("seed")))
        identity += [(f"train.{k}", old_train.get(k), new_train.get(k))
                     for k in IDENTITY_TRAIN_KEYS]
    optimizer = [(f"train.{k}", old_train.get(k), new_train.get(k))
                 for k in sorted(set(old_train) | set(new_train))
                 if k not in IDENTITY_TRAIN_KEYS + SILENT_TRAIN_KEYS]
    return differences(identity), differences(optimizer)


def _local_eval_windows(tokens: TokenArrays, seq_len: int, max_windows: int,
                        chunk: int) -> list[np.ndarray]:
    """This process's share of the fixed validation windows, in chunks of the micro-batch."""
    windows = evaluation_windows(tokens.validation, seq_len, max_windows)
    usable = (windows.shape[0] // chunk) * chunk
    if usable == 0:
        raise TrainingError(f"the validation split gives {windows.shape[0]} windows of "
                            f"{seq_len + 1} tokens, fewer than one micro-batch ({chunk})")
    rows = windows[:usable].reshape(-1, chunk, seq_len + 1)
    per_process = chunk // jax.process_count()
    first = jax.process_index() * per_process
    return [c[first:first + per_process] for c in rows]


def _against(references: dict | None) -> str:
    """What the validation loss is to be judged by, on the log line beside it."""
    if references is None:
        return ""
    floor = references.get("floor")
    return (f" | references: unigram {references['unigram']:.4f}, bigram "
            f"{references['bigram']:.4f}" + ("" if floor is None else f", floor {floor:.4f}"))


def _checkpoint_meta(config, tokens: TokenArrays, step: int) -> dict:
    return {"config": config.to_dict(), "sampler_step": step,
            "data_fingerprint": tokens.manifest.get("fingerprint"), "versions": package_versions()}


def _write_run_files(config, workdir: Path, tokens: TokenArrays) -> None:
    """The config and versions next to every result, so any number can be reproduced."""
    if not is_main_process():
        return
    layout = RunLayout(workdir)
    write_text_atomically(layout.config, config.to_json(indent=2, sort_keys=True))
    run_info = {"versions": package_versions(), "devices": [str(d) for d in jax.devices()],
                "process_count": jax.process_count(), "data": tokens.manifest}
    write_json_atomically(layout.run_info, run_info)


def _divergence_message(loss: float, step: int, checkpointer: Checkpointer) -> str:
    last = checkpointer.latest_step()
    kept = (f"the last good checkpoint (step {last}) is kept in {checkpointer.directory}"
            if last is not None else "no checkpoint had been saved yet")
    return (f"training diverged: loss is {loss} at step {step}; {kept}. Lower "
            "train.learning_rate or raise train.warmup_steps, then rerun to resume from it.")


def _log_line(step: int, values: dict) -> str:
    line = f"step {step} | loss {values['loss']:.4f}"
    if "tokens_per_second" in values:
        line += (f" | {values['tokens_per_second']:,.0f} tokens/s"
                 f" | {values['seconds_per_step']:.3f} s/step")
    return line


def _say(message: str, is_main: bool, progress: tqdm | None = None) -> None:
    if is_main:
        (progress.write if progress is not None else print)(message)


class _NoMetrics:
    """What a process other than 0 writes metrics into: nothing (process 0 writes the record)."""

    def write(self, step: int, values: dict, split: str = "train") -> None:
        pass


# How many dispatched steps may wait for the device. JAX dispatches asynchronously, so an
# unbounded loop runs ahead of the device by as many steps as Python queues between two log lines
# (10 s of work in the run, 2.3 s at the tiny size here), and a stop waits for them; on a
# preempted TPU VM the grace period is 30 s. With 2, the next step is always queued while one
# runs, and a stop is acted on at most MAX_STEPS_IN_FLIGHT + 1 steps after the signal arrived
# (the README's bound; the stop line says how many it was).
MAX_STEPS_IN_FLIGHT = 2


class _StepsInFlight:
    """The metrics of the steps dispatched but perhaps not yet computed, oldest first; admitting
    one more than the limit waits for the oldest."""

    def __init__(self, limit: int, done: int) -> None:
        self.limit = limit
        self.pending: collections.deque[tuple[int, object]] = collections.deque()
        self.done = done  # the last step known to be computed

    def admit(self, step: int, metrics) -> None:
        self.pending.append((step, metrics))
        while len(self.pending) > self.limit:
            step_waited, oldest = self.pending.popleft()
            jax.block_until_ready(oldest)
            self.done = step_waited

    def completed_step(self) -> int:
        """The last step the device has finished, without waiting."""
        done = self.done
        for step, metrics in self.pending:
            if not all(leaf.is_ready() for leaf in jax.tree_util.tree_leaves(metrics)):
                break
            done = step
        return done


class _StopRequest:
    """Whether the loop stops after this step. Alone, a signal sets a flag read once per step;
    in a multi-process job the step comes from JAX's preemption sync point, the same on every
    process (see `crate_jax.distributed.stop_agreed_at`)."""

    def __init__(self, agreed: bool) -> None:
        self.agreed = agreed
        self.requested = False
        self.signal: int | None = None  # the signal that asked for the stop
        self.progress: Callable[[], int] | None = None  # the loop's last computed step
        self.computed_at_signal: int | None = None

    def ask(self, signum: int) -> None:
        """The signal handler's part: the request, and how far the device was when it came."""
        if not self.requested and self.progress is not None:
            self.computed_at_signal = self.progress()
        self.requested, self.signal = True, signum

    def lag(self, step: int) -> str:
        """How many steps ran after the signal, for the stop line (said where it was measured)."""
        if self.computed_at_signal is None:
            return ""
        after = step - self.computed_at_signal
        return f" ({after} step{'s' if after != 1 else ''} after the signal)"

    def requested_at(self, step: int) -> bool:
        if not self.agreed:
            return self.requested
        if stop_agreed_at(step):
            self.signal = self.signal or signal.SIGTERM  # another process may have had it
            return True
        return False


@contextlib.contextmanager
def _stop_on_signals(agreed: bool) -> Iterator[_StopRequest]:
    """SIGTERM (preemption) and SIGINT (Ctrl-C) ask the loop to save and stop at the next step;
    a second SIGINT interrupts at once.

    `agreed` (a multi-process job): SIGTERM stays with JAX's preemption notifier, which tells
    every process; a first SIGINT is passed on to it as a SIGTERM of this process.
    """
    stop = _StopRequest(agreed)

    def request(signum, frame):
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.ask(signum)
        if agreed:
            os.kill(os.getpid(), signal.SIGTERM)

    handled = (signal.SIGINT,) if agreed else (signal.SIGTERM, signal.SIGINT)
    try:
        previous = {sig: signal.signal(sig, request) for sig in handled}
    except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
        previous = {}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
