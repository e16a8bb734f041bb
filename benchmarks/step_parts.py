"""Where our train step gains or loses against the paper's PyTorch code: block by block.

    python benchmarks/step_parts.py --paper_repo=/path/to/crate-lm --seq_len=256 --batch_size=16

`paper_side_by_side.py` compares whole steps; this times the blocks of CRATE's step apart, on the
same shapes, forward and backward (the gradient of a fixed random projection of the output,
with respect to the input and the block's parameters), ours jitted, the paper's eager:

- `attention`: CRATE's MSSA, our `SubspaceSelfAttention` against the paper's
  `CausalSelfAttention` (`crate_overcomplete.py`, PyTorch's `scaled_dot_product_attention`);
- `ista`: our `SparseCodingBlock` against the paper's ISTA `MLP`;
- `head and loss`: the tied output head and the next-token cross-entropy over the vocabulary,
  our `cross_entropy` against the `F.linear` + `F.cross_entropy` of the paper's `forward`.

Each round times every block, ours then theirs; the table reports medians over rounds.
`--attention_impl` picks our attention kernel (`xla`, this script's default, or `blockwise`,
what `auto` picks on a CPU), `--head_impl` our head and loss (`logits`, this script's default,
or `chunked`, `auto`'s on a CPU: `chunked_head.py`).
"""

from __future__ import annotations

import importlib
import os
import statistics
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from crate_jax.losses import cross_entropy  # noqa: E402
from crate_jax.model.attention import SubspaceSelfAttention  # noqa: E402
from crate_jax.model.chunked_head import chunked_next_token_loss  # noqa: E402
from crate_jax.model.ista import SparseCodingBlock  # noqa: E402

_PAPER_REPO = flags.DEFINE_string("paper_repo", None, "A checkout of crate-lm/crate-lm.")
_SIZE = flags.DEFINE_string("size", "tiny", "Size preset of configs/crate.py.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Sequences per batch.")
_SEQ = flags.DEFINE_integer("seq_len", 256, "Tokens per sequence.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls per block and round (median).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds; medians are reported.")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count(), "PyTorch intra-op threads.")
_ATTENTION_IMPL = flags.DEFINE_string("attention_impl", "xla", "Our attention kernel "
                                      "(model.attention_impl: xla | blockwise).")
_HEAD_IMPL = flags.DEFINE_string("head_impl", "logits", "How our head and loss are computed "
                                 "(model.head_impl: logits | chunked).")
flags.mark_flag_as_required("paper_repo")

BLOCKS = ("attention", "ista", "head and loss")


def _median_seconds(call, steps: int) -> float:
    for _ in range(2):
        call()
    durations = []
    for _ in range(steps):
        started = time.perf_counter()
        call()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def our_blocks(settings: dict, batch: int, seq: int) -> dict:
    """`{block: call}`, each call one jitted forward and backward, waited for."""
    rng = np.random.default_rng(0)
    width, vocab = settings["embed_dim"], settings["vocab_size"]
    x = jnp.asarray(rng.normal(size=(batch, seq, width)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(batch, seq, width)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, (batch, seq)), jnp.int32)
    embedding = jnp.asarray(rng.normal(size=(vocab, width)) * 0.02, jnp.float32)
    modules = {"attention": SubspaceSelfAttention(num_heads=settings["num_heads"],
                                                  attention_impl=_ATTENTION_IMPL.value),
               "ista": SparseCodingBlock(expansion=settings["ista_expansion"],
                                         num_steps=settings["ista_steps"],
                                         step_size=settings["ista_step_size"],
                                         threshold=settings["ista_threshold"])}
    calls = {}
    for name, module in modules.items():
        params = module.init(jax.random.key(0), x)

        def loss(params, x, module=module):
            return (module.apply(params, x) * cotangent).sum()
        gradient = jax.jit(jax.grad(loss, argnums=(0, 1)))
        calls[name] = lambda gradient=gradient, params=params: jax.block_until_ready(
            gradient(params, x))

    def head_loss(embedding, x):
        if _HEAD_IMPL.value == "chunked":
            return chunked_next_token_loss(x, embedding, targets)
        return cross_entropy(x @ embedding.T, targets).mean()
    head_gradient = jax.jit(jax.grad(head_loss, argnums=(0, 1)))
    calls["head and loss"] = lambda: jax.block_until_ready(head_gradient(embedding, x))
    return calls


def paper_blocks(settings: dict, batch: int, seq: int) -> dict:
    """`{block: call}`, each call the paper's eager forward and backward."""
    import torch
    import torch.nn.functional as F

    module = importlib.import_module("crate_overcomplete")
    config = module.CRATEConfig(block_size=seq, vocab_size=settings["vocab_size"],
                                n_layer=settings["num_layers"], n_head=settings["num_heads"],
                                n_embd=settings["embed_dim"], dropout=0.0, bias=True)
    torch.manual_seed(0)
    x = torch.randn(batch, seq, config.n_embd, requires_grad=True)
    cotangent = torch.randn(batch, seq, config.n_embd)
    targets = torch.randint(0, config.vocab_size, (batch * seq,))
    embedding = torch.nn.Parameter(torch.randn(config.vocab_size, config.n_embd) * 0.02)
    blocks = {"attention": module.CausalSelfAttention(config), "ista": module.MLP(config)}
    calls = {}
    for name, block in blocks.items():
        def call(block=block):
            (block(x) * cotangent).sum().backward()
            block.zero_grad(set_to_none=True)
            x.grad = None
        calls[name] = call

    def head_call():
        logits = F.linear(x, embedding)
        F.cross_entropy(logits.view(-1, logits.size(-1)), targets).backward()
        embedding.grad = x.grad = None
    calls["head and loss"] = head_call
    return calls


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import torch

    torch.set_num_threads(_THREADS.value)
    sys.path.insert(0, str(Path(_PAPER_REPO.value).expanduser().resolve()))
    settings = importlib.import_module("configs.crate").get_config(_SIZE.value).model.to_dict()
    ours = our_blocks(settings, _BATCH.value, _SEQ.value)
    theirs = paper_blocks(settings, _BATCH.value, _SEQ.value)
    times = {(side, block): [] for side in ("ours", "theirs") for block in BLOCKS}
    for round_index in range(_ROUNDS.value):
        for block in BLOCKS:
            times["ours", block].append(_median_seconds(ours[block], _STEPS.value))
            times["theirs", block].append(_median_seconds(theirs[block], _STEPS.value))
        print(f"round {round_index + 1} done", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {_THREADS.value} threads; jax {jax.__version__}; "
          f"{' '.join(['python', *sys.argv])}")
    print(f"`{_SIZE.value}`, batch {_BATCH.value} x seq {_SEQ.value}, float32, forward + "
          f"backward per block, medians of {_ROUNDS.value} rounds x {_STEPS.value} calls; our "
          f"attention kernel: {_ATTENTION_IMPL.value}; our head and loss: {_HEAD_IMPL.value}")
    print("| block | ours (ms) | paper's PyTorch eager (ms) | ours / theirs |")
    print("|---|---:|---:|---:|")
    for block in BLOCKS:
        mine = statistics.median(times["ours", block])
        paper = statistics.median(times["theirs", block])
        print(f"| {block} | {1e3 * mine:.1f} | {1e3 * paper:.1f} | {mine / paper:.2f}x |")


if __name__ == "__main__":
    app.run(main)
