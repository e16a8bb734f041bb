"""Our train step beside the paper's own PyTorch code, same shapes, same machine, same run.

    python benchmarks/paper_side_by_side.py --paper_repo=/path/to/crate-lm --rounds=3

`--paper_repo` is a checkout of github.com/crate-lm/crate-lm: its `crate_overcomplete.py` (CRATE)
and `gpt.py` (GPT-2) are imported from there, never copied into this repository. Each round times
our step (`train_throughput.measure`: compiled, median of `--steps` after `--warmup`) and then the
paper's eager PyTorch step (forward, backward, global-norm clip, AdamW as its
`configure_optimizers` builds it) on the same batch shape, variant after variant, so both see the
same machine load; the table reports medians over rounds. PyTorch uses `--threads` threads (the
machine's cores by default), as XLA does.

On a GPU (the speed issue's table: CRATE-B and GPT-2-B, bfloat16, seq 1024, batch 16):

    python benchmarks/paper_side_by_side.py --paper_repo=/path/to/crate-lm --size=b \
        --dtype=bfloat16 --seq_len=1024 --batch_size=16 --torch_device=cuda --torch_compile

runs the paper's step as its `train.py` does there: on `--torch_device`, under
`torch.autocast(bfloat16)` where our model runs in bfloat16, with its fused AdamW on CUDA, and
with `--torch_compile` also `torch.compile`d (its first warmup step compiles), timed after
`torch.cuda.synchronize()`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput  # noqa: E402  (defines --size, --steps, --warmup, --batch_size, ...)

_PAPER_REPO = flags.DEFINE_string("paper_repo", None, "A checkout of crate-lm/crate-lm.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds; medians are reported.")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count(), "PyTorch intra-op threads.")
_TORCH_DEVICE = flags.DEFINE_enum("torch_device", "cpu", ["cpu", "cuda"],
                                  "Where the paper's PyTorch step runs.")
_TORCH_COMPILE = flags.DEFINE_boolean("torch_compile", False,
                                      "Also time the paper's step under torch.compile.")
flags.mark_flag_as_required("paper_repo")

# Our config file and the paper's (module, config class, model class) of the same architecture.
PAPER_MODELS = {"crate": ("crate_overcomplete", "CRATEConfig", "CRATE"),
                "gpt2": ("gpt", "GPTConfig", "GPT")}


def paper_seconds_per_step(variant: str, settings: dict, batch_size: int, seq_len: int, *,
                           compiled: bool = False) -> float:
    """Median seconds of the paper's train step (eager, or `torch.compile`d with `compiled`) for
    the shape of our model `settings` (the `config.model` that `train_throughput.measure`
    timed), on `--torch_device`, in bfloat16 autocast where `settings` are bfloat16."""
    import torch

    device = _TORCH_DEVICE.value
    module_name, config_class, model_class = PAPER_MODELS[variant]
    module = importlib.import_module(module_name)
    torch.manual_seed(0)
    config = getattr(module, config_class)(
        block_size=seq_len, vocab_size=settings["vocab_size"], n_layer=settings["num_layers"],
        n_head=settings["num_heads"], n_embd=settings["embed_dim"], dropout=0.0, bias=True)
    model = getattr(module, model_class)(config).to(device)
    optimizer = model.configure_optimizers(0.1, 3e-3, (0.9, 0.95), device)  # fused on CUDA
    forward = torch.compile(model) if compiled else model
    tokens = torch.randint(0, settings["vocab_size"], (batch_size, seq_len + 1), device=device)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    half = settings["dtype"] == "bfloat16"

    def step() -> None:
        # As the paper's train.py: the forward pass and loss under autocast, the rest outside.
        with (torch.autocast(device_type=device, dtype=torch.bfloat16) if half
              else contextlib.nullcontext()):
            _, loss = forward(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(train_throughput._WARMUP.value):
        step()
    durations = []
    for _ in range(train_throughput._STEPS.value):
        started = time.perf_counter()
        step()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import torch

    if _TORCH_DEVICE.value == "cuda" and not torch.cuda.is_available():
        raise app.UsageError("--torch_device=cuda, but this PyTorch sees no CUDA device")
    torch.set_num_threads(_THREADS.value)
    sys.path.insert(0, str(Path(_PAPER_REPO.value).expanduser().resolve()))
    variants = [v for v in train_throughput._VARIANTS.value if v in PAPER_MODELS]
    paper_modes = ["eager", "compiled"] if _TORCH_COMPILE.value else ["eager"]
    ours = {v: [] for v in variants}
    theirs = {(v, mode): [] for v in variants for mode in paper_modes}
    last = {}
    for round_number in range(1, _ROUNDS.value + 1):
        for variant in variants:
            result = last[variant] = train_throughput.measure(variant)
            ours[variant].append(result["tokens_per_second"])
            batch, seq = result["batch_size"], result["seq_len"]
            line = f"round {round_number} {variant}: ours {ours[variant][-1]:,.0f} tok/s"
            for mode in paper_modes:
                theirs[variant, mode].append(batch * seq / paper_seconds_per_step(
                    variant, result["model_config"], batch, seq, compiled=mode == "compiled"))
                line += f", paper {mode} {theirs[variant, mode][-1]:,.0f} tok/s"
            print(line, flush=True)
    print(f"\ntorch {torch.__version__} on {_TORCH_DEVICE.value}, {_THREADS.value} threads; "
          f"{train_throughput.exact_command()}")
    print(markdown_table(variants, paper_modes, ours, theirs, last,
                         train_throughput.machine()["platform"]))


def markdown_table(variants: list[str], paper_modes: list[str], ours: dict, theirs: dict,
                   last: dict, platform_name: str) -> str:
    """Medians over rounds; ours' MFU, compile time and peak memory from its last round (the
    cells as `train_throughput.py` writes them)."""
    header = "| variant | batch x seq, dtype | ours (tok/s) | MFU | compile (s) | peak memory |"
    rule = "|---|---|---:|---:|---:|---:|"
    for mode in paper_modes:
        header += f" paper's PyTorch {mode} (tok/s) | ours / {mode} |"
        rule += "---:|---:|"
    lines = [header, rule]
    for variant in variants:
        result, mine = last[variant], statistics.median(ours[variant])
        row = (f"| {variant} | {result['batch_size']} x {result['seq_len']}, {result['dtype']} "
               f"| {mine:,.0f} | {train_throughput.mfu_cell(result['mfu'], platform_name)} "
               f"| {result['compile_seconds']:.1f} "
               f"| {train_throughput.mebibytes(result['peak_memory_bytes'])} |")
        for mode in paper_modes:
            paper = statistics.median(theirs[variant, mode])
            row += f" {paper:,.0f} | {mine / paper:.2f}x |"
        lines.append(row)
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
