"""What `python -m crate_jax.convert` costs at GPT-2 small's size, and how exactly it converts.

  python benchmarks/conversion.py [--paper_repo=/path/to/crate-lm] [--json_out=conversion.json]

1. Cost and parity with `transformers`: a random `GPT2LMHeadModel` of GPT-2 small's shape
   (124M parameters: 12 layers, d 768, 12 heads, vocab 50257, context 1024), every parameter
   random, saved as safetensors. Each conversion runs as a user runs it, a fresh process of the
   command line, timed (wall) with its peak resident memory (the child's own `ru_maxrss`):
   import into a workdir, export back to `hf-gpt2` and to `crate-lm`. Then our logits of the
   imported model beside transformers' on the same tokens (max |difference|, float32).
2. With `--paper_repo` (a checkout of github.com/crate-lm/crate-lm, never copied in here):
   parity with the paper's own code. Its `CRATE` (`crate_overcomplete.py`) and `GPT`
   (`gpt.py`, biases on and off) are built by that code, every parameter made random, saved as
   its train.py saves them (with torch.compile's `_orig_mod.` prefix), converted by the command
   line, and their logits compared with ours; then our models exported `--to=crate-lm` and
   loaded by the paper's classes (`load_state_dict`, strict), logits compared again.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
_PAPER_REPO = flags.DEFINE_string("paper_repo", None, "A checkout of crate-lm/crate-lm.")
_PAPER_SIZE = flags.DEFINE_string("paper_size", "2l", "Size of the paper-code parity models: "
                                  "2l (2 layers, d 128) or b (12 layers, d 768).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the measurements here.")
_TOKENS = flags.DEFINE_integer("tokens", 128, "Sequence length of the logit comparisons.")

GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
PAPER_SIZES = {"2l": dict(n_layer=2, n_head=4, n_embd=128), "b": dict(n_layer=12, n_head=12,
                                                                        n_embd=768)}


def run_convert(arguments: list[str]) -> dict:
    """Runs `python -m crate_jax.convert <arguments>` in a fresh process: its wall seconds and
    its own peak resident memory (`os.wait4`'s rusage of that child)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "crate_jax.convert", *arguments], cwd=REPO,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode:
        raise SystemExit(f"convert {' '.join(arguments)} failed:\n{errors[-3000:]}")
    return {"command": "python -m crate_jax.convert " + " ".join(arguments),
            "seconds": round(seconds, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def our_logits(workdir: Path, tokens: np.ndarray) -> np.ndarray:
    from crate_jax.convert.workdir import read_run_model
    from crate_jax.generation import steered_logits
    from crate_jax.model import LanguageModel

    run = read_run_model(workdir)
    return np.asarray(steered_logits(LanguageModel(run.settings), run.params, tokens))


def randomize(model, seed: int) -> None:
    """Every parameter of a torch model random: weights scaled to GPT-2's 0.02, norms around 1,
    biases around 0 (a fresh model's zero biases and unit norms would hide a misplaced one)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim == 1:
                parameter.copy_((1.0 if "weight" in name else 0.0) + 0.1 * noise)
            else:
                parameter.copy_(0.02 * noise)


def hugging_face_cost(folder: Path) -> dict:
    import torch
    import transformers

    config = transformers.GPT2Config(**GPT2_SMALL)
    model = transformers.GPT2LMHeadModel(config).eval()
    randomize(model, seed=0)
    source = folder / "gpt2_small"
    model.save_pretrained(source)
    parameters = sum(p.numel() for p in model.parameters())
    workdir = folder / "run"
    # GPT-2's vocabulary: the workdir uses tiktoken's BPE; no tokenizer file is needed here.
    runs = [run_convert(["--from=hf-gpt2", f"--checkpoint={source}",
                                 f"--workdir={workdir}"]),
            run_convert(["--to=hf-gpt2", f"--workdir={workdir}",
                                 f"--checkpoint={folder / 'exported_hf'}"]),
            run_convert(["--to=crate-lm", f"--workdir={workdir}",
                                 f"--checkpoint={folder / 'exported.pt'}"])]
    tokens = np.random.default_rng(0).integers(0, GPT2_SMALL["vocab_size"], (2, _TOKENS.value))
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens)).logits.numpy()
    difference = float(np.abs(our_logits(workdir, tokens) - theirs).max())
    exported = transformers.GPT2LMHeadModel.from_pretrained(folder / "exported_hf").eval()
    with torch.no_grad():
        round_trip = float(np.abs(exported(torch.from_numpy(tokens)).logits.numpy()
                                  - theirs).max())
    return {"model": {**GPT2_SMALL, "parameters": parameters}, "conversions": runs,
            "max_abs_logit_difference_vs_transformers": difference,
            "max_abs_logit_difference_after_export_vs_original": round_trip,
            "logit_scale": float(np.abs(theirs).max())}


def paper_parity(folder: Path, paper_repo: Path) -> list[dict]:
    import torch

    sys.path.insert(0, str(paper_repo))
    import crate_overcomplete
    import gpt

    size = PAPER_SIZES[_PAPER_SIZE.value]
    rows = []
    cases = [("crate", crate_overcomplete.CRATEConfig, crate_overcomplete.CRATE, True),
             ("gpt", gpt.GPTConfig, gpt.GPT, True), ("gpt", gpt.GPTConfig, gpt.GPT, False)]
    tokens = np.random.default_rng(1).integers(0, 50257, (2, _TOKENS.value))
    for index, (name, config_class, model_class, bias) in enumerate(cases):
        model_args = dict(**size, block_size=1024, bias=bias, vocab_size=50304, dropout=0.0)
        model = model_class(config_class(**model_args)).eval()
        randomize(model, seed=10 + index)
        label = f"{name} (bias={bias})"
        checkpoint = folder / f"paper_{name}_{bias}.pt"
        torch.save({"model": {f"_orig_mod.{key}": value
                              for key, value in model.state_dict().items()},
                    "model_args": model_args, "iter_num": 600000}, checkpoint)
        workdir = folder / f"paper_{name}_{bias}"
        run_convert(["--from=crate-lm", f"--checkpoint={checkpoint}", f"--workdir={workdir}"])
        with torch.no_grad():
            # With targets the paper's forward returns every position's logits.
            theirs, _ = model(torch.from_numpy(tokens), targets=torch.from_numpy(tokens))
        ours = our_logits(workdir, tokens)
        imported = float(np.abs(ours - theirs.numpy()).max())

        exported = folder / f"exported_{name}_{bias}.pt"
        run_convert(["--to=crate-lm", f"--workdir={workdir}", f"--checkpoint={exported}"])
        saved = torch.load(exported, weights_only=True)
        reloaded = model_class(config_class(**saved["model_args"])).eval()
        reloaded.load_state_dict(saved["model"], strict=True)
        with torch.no_grad():
            again, _ = reloaded(torch.from_numpy(tokens), targets=torch.from_numpy(tokens))
        rows.append({"model": label, "size": size, "tokens": list(tokens.shape),
                     "imported_max_abs_logit_difference": imported,
                     "exported_max_abs_logit_difference": float(np.abs(ours - again.numpy()).max()),
                     "logit_scale": float(np.abs(theirs.numpy()).max())})
    return rows


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from crate_jax.versions import package_versions

    record = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "versions": package_versions(), "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="crate_jax_conversion_") as scratch:
        folder = Path(scratch)
        record["hugging_face"] = hugging_face_cost(folder)
        if _PAPER_REPO.value:
            commit = subprocess.run(["git", "-C", _PAPER_REPO.value, "rev-parse", "--short",
                                     "HEAD"], capture_output=True, text=True).stdout.strip()
            record["paper_code"] = {"repo": _PAPER_REPO.value, "commit": commit or None,
                                    "rows": paper_parity(folder, Path(_PAPER_REPO.value))}
    print_tables(record)
    if _JSON_OUT.value:
        Path(_JSON_OUT.value).write_text(json.dumps(record, indent=2, sort_keys=True))


def print_tables(record: dict) -> None:
    hf = record["hugging_face"]
    print(f"GPT-2 small shape, random ({hf['model']['parameters']:,} parameters), "
          f"{record['cpu_count']} CPUs, {record['date']}")
    print("| command | wall (s) | peak RSS (MiB) |\n|---|---:|---:|")
    for run in hf["conversions"]:
        print(f"| `{run['command'].split(' --workdir')[0]}` | {run['seconds']:.1f} | "
              f"{run['peak_rss_mib']:,.0f} |")
    print(f"max |logit difference| vs transformers: "
          f"{hf['max_abs_logit_difference_vs_transformers']:.2e} (logits up to "
          f"{hf['logit_scale']:.1f}); exported and reloaded in transformers: "
          f"{hf['max_abs_logit_difference_after_export_vs_original']:.2e}")
    if "paper_code" in record:
        paper = record["paper_code"]
        print(f"\nParity with the paper's code (crate-lm at {paper['commit']}), "
              f"{_PAPER_SIZE.value} size:")
        print("| model | imported: max abs logit diff | exported, loaded by the paper's class |"
              " logits up to |\n|---|---:|---:|---:|")
        for row in paper["rows"]:
            print(f"| {row['model']} | {row['imported_max_abs_logit_difference']:.2e} | "
                  f"{row['exported_max_abs_logit_difference']:.2e} | {row['logit_scale']:.1f} |")


if __name__ == "__main__":
    app.run(main)
