"""Our train step beside the paper's own PyTorch code, same shapes, same machine, same run.

    python benchmarks/paper_side_by_side.py --paper_repo=/path/to/crate-lm --rounds=3

`--paper_repo` is a checkout of github.com/crate-lm/crate-lm: its `crate_overcomplete.py` (CRATE)
and `gpt.py` (GPT-2) are imported from there, never copied into this repository. Each round times
our step (`train_throughput.measure`: compiled, median of `--steps` after `--warmup`) and then the
paper's eager PyTorch step (forward, backward, global-norm clip, AdamW as its
`configure_optimizers` builds it) on the same batch shape, variant after variant, so both see the
same machine load; the table reports medians over rounds. PyTorch uses `--threads` threads (the
machine's cores by default), as XLA does.
"""

from __future__ import annotations

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
flags.mark_flag_as_required("paper_repo")

# Our config file and the paper's (module, config class, model class) of the same architecture.
PAPER_MODELS = {"crate": ("crate_overcomplete", "CRATEConfig", "CRATE"),
                "gpt2": ("gpt", "GPTConfig", "GPT")}


def paper_seconds_per_step(variant: str, settings: dict, batch_size: int, seq_len: int) -> float:
    """Median seconds of the paper's eager train step for the shape of our model `settings` (the
    `config.model` that `train_throughput.measure` timed)."""
    import torch

    module_name, config_class, model_class = PAPER_MODELS[variant]
    module = importlib.import_module(module_name)
    torch.manual_seed(0)
    config = getattr(module, config_class)(
        block_size=seq_len, vocab_size=settings["vocab_size"], n_layer=settings["num_layers"],
        n_head=settings["num_heads"], n_embd=settings["embed_dim"], dropout=0.0, bias=True)
    model = getattr(module, model_class)(config)
    optimizer = model.configure_optimizers(0.1, 3e-3, (0.9, 0.95), "cpu")
    tokens = torch.randint(0, settings["vocab_size"], (batch_size, seq_len + 1))
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step() -> None:
        _, loss = model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

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

    torch.set_num_threads(_THREADS.value)
    sys.path.insert(0, str(Path(_PAPER_REPO.value).expanduser().resolve()))
    variants = [v for v in train_throughput._VARIANTS.value if v in PAPER_MODELS]
    ours = {v: [] for v in variants}
    theirs = {v: [] for v in variants}
    shape = {}
    for round_number in range(1, _ROUNDS.value + 1):
        for variant in variants:
            result = train_throughput.measure(variant)
            shape[variant] = (result["batch_size"], result["seq_len"], result["dtype"])
            ours[variant].append(result["tokens_per_second"])
            batch, seq, _ = shape[variant]
            theirs[variant].append(batch * seq / paper_seconds_per_step(
                variant, result["model_config"], batch, seq))
            print(f"round {round_number} {variant}: ours {ours[variant][-1]:,.0f} tok/s, "
                  f"paper eager {theirs[variant][-1]:,.0f} tok/s", flush=True)
    print(f"\ntorch {torch.__version__}, {_THREADS.value} threads; "
          f"{train_throughput.exact_command()}")
    print("| variant | batch x seq, dtype | ours (tok/s) | paper's PyTorch eager (tok/s) | ratio |")
    print("|---|---|---:|---:|---:|")
    for variant in variants:
        mine, paper = statistics.median(ours[variant]), statistics.median(theirs[variant])
        batch, seq, dtype = shape[variant]
        print(f"| {variant} | {batch} x {seq}, {dtype} | {mine:,.0f} | {paper:,.0f} | "
              f"{mine / paper:.2f}x |")


if __name__ == "__main__":
    app.run(main)
