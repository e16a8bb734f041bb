"""At what training budget the planted models learn the copy pattern: loss above the floor on
copied tokens, by variant and step.

    python benchmarks/copy_budget.py --config=configs/ablation.py --variants=gpt2,crate \
        --steps=600,2000 --workdir=/tmp/copy_budget

Why: on the planted corpus most of a default-budget model's loss above the entropy floor sits on
the tokens of `again : <the previous sentence>` (an induction pattern), and ablation B is about
attention, so the README has to say at what budget attention has learned that job. For each
variant (seed 0 of the study's run config: same corpus, model and optimizer settings) and each
budget in `--steps`, this trains a run of exactly that many steps (the cosine schedule stretched
to it, warmup as the study's) with the real training stage, in `<workdir>/<variant>_<steps>/`
(resumable: a finished run is not retrained), then measures on the interpretability text's
targets, as the study's `ground_truth.json` does (`ground_truth.loss_above_floor`, only targets
whose document starts in their sequence): the mean loss above the floor per token on
`copy:copied` tokens, on `copy:next_copied` tokens (the position before a copied token: `:` and
every copied token but the last) and on all targets. `--every=N` also measures every N-th step
of each run (its checkpoints), the curve within one schedule.

Prints a markdown table (`trained (s)`: the wall time this call spent training the run; empty
for a run it found finished); `--json_out` also writes the rows.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import jax  # noqa: E402

from crate_jax.cli import define_config_flag, parse_flags  # noqa: E402
from crate_jax.data.token_arrays import prepare_token_arrays, read_planted_truth  # noqa: E402
from crate_jax.data.tokenizer import load_saved_tokenizer  # noqa: E402
from crate_jax.interp.activations.capture import evaluation_sequences  # noqa: E402
from crate_jax.interp.ground_truth import capture_all_neurons, loss_above_floor  # noqa: E402
from crate_jax.layout import RunLayout  # noqa: E402
from crate_jax.model import abstract_params, model_from_config  # noqa: E402
from crate_jax.study import run_configs  # noqa: E402
from crate_jax.train.checkpoints import Checkpointer  # noqa: E402
from crate_jax.train.loop import train_and_evaluate  # noqa: E402
from crate_jax.versions import package_versions  # noqa: E402

_CONFIG = define_config_flag()
_VARIANTS = flags.DEFINE_string("variants", "crate,no_ista,standard_attention,gpt2",
                                "Comma-separated variants of the study config.")
_STEPS = flags.DEFINE_string("steps", "600,2000", "Comma-separated training budgets (steps).")
_EVERY = flags.DEFINE_integer("every", 0, "Also measure every N-th step's checkpoint (0: only "
                              "the last).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs go (resumable).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the rows here.")
flags.mark_flags_as_required(["config", "workdir"])

COPY_FEATURES = ("copy:copied", "copy:next_copied")
TARGET_NATS = 0.2  # the speed issue's goal: copied tokens within 0.2 nats of the floor


def seed_zero_runs(study_config, variants: list[str]) -> dict[str, object]:
    """`{variant: its seed-0 run config in the study}` (checked as the study checks them)."""
    runs = run_configs(study_config)
    return {variant: next(run for run in runs.values()
                          if run.variant == variant and run.seed == 0) for variant in variants}


def budget_config(seed_zero_run, steps: int, every: int):
    """A copy of `seed_zero_run` trained for `steps` (checkpoints every `every` steps and at the
    end, all kept); train stage only."""
    run = copy.deepcopy(seed_zero_run)
    run.train.num_steps = steps
    run.train.checkpoint_every = every if every else steps
    run.train.eval_every = min(run.train.eval_every, steps)
    run.train.keep_checkpoints = steps // run.train.checkpoint_every + 1
    run.train.progress_bar = False
    run.stages = "train"
    return run


def copy_gaps(run, workdir: Path, steps: list[int]) -> dict[int, dict]:
    """`{step: loss_above_floor(...)}` of the run's checkpoints at `steps`, on the study's
    interpretability text."""
    model = model_from_config(run)
    tokens = prepare_token_arrays(run.data, model.config.vocab_size, workdir)
    truth = read_planted_truth(RunLayout(workdir).data_dir)
    if truth is None:
        raise SystemExit(f"FATAL: {workdir} has no planted truth: this benchmark needs the "
                         "planted corpus (configs/ablation.py)")
    end_of_text = load_saved_tokenizer(run.data.tokenizer, RunLayout(workdir).data_dir,
                                       model.config.vocab_size).end_of_text
    sequences = evaluation_sequences(tokens.validation, run.interp.seq_len,
                                     run.interp.num_sequences)
    labels = truth["labels"][:sequences.size]
    names = [str(name) for name in truth["features"]]
    gaps = {}
    shapes = abstract_params(model.config)
    with Checkpointer(RunLayout(workdir).checkpoints, save_every=run.train.checkpoint_every,
                      keep=None) as checkpointer:
        for step in steps:
            params = checkpointer.restore_params(step, shapes)
            _, nll = capture_all_neurons(model, params, sequences, (), run.interp.batch_size)
            gaps[step] = loss_above_floor(nll, truth["floor_nll"][:sequences.size], labels,
                                          names, sequences=sequences, end_of_text=end_of_text)
    return gaps


def _last_checkpoint(run, workdir: Path) -> int | None:
    if not RunLayout(workdir).checkpoints.is_dir():
        return None
    with Checkpointer(RunLayout(workdir).checkpoints, save_every=run.train.checkpoint_every,
                      keep=None) as checkpointer:
        return checkpointer.latest_step()


def row(variant: str, budget: int, step: int, gap: dict, train_seconds: float | None) -> dict:
    """One table row; a copy feature with no counted target (a tiny test corpus) is NaN."""
    above = {name: gap["by_feature"].get(name, {}).get("excess_per_token", math.nan)
             for name in COPY_FEATURES}
    return {"variant": variant, "budget": budget, "step": step, "loss": gap["model_loss"],
            "floor": gap["floor"], "above_floor": gap["excess"],
            **{f"{name}_above_floor": value for name, value in above.items()},
            "within_target": above["copy:copied"] <= TARGET_NATS,
            "train_seconds": train_seconds}


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | budget (steps) | at step | loss | floor | above floor | copied: above "
             "floor | next copied: above floor | trained (s) |", "|---" * 9 + "|"]
    for r in rows:
        seconds = "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(f"| {r['variant']} | {r['budget']} | {r['step']} | {r['loss']:.3f} | "
                     f"{r['floor']:.3f} | {r['above_floor']:.3f} | "
                     f"{r['copy:copied_above_floor']:.3f} | "
                     f"{r['copy:next_copied_above_floor']:.3f} | {seconds} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    study_config = _CONFIG.value
    variants = [v.strip() for v in _VARIANTS.value.split(",") if v.strip()]
    budgets = [int(s) for s in _STEPS.value.split(",") if s.strip()]
    rows = []
    for variant, seed_zero_run in seed_zero_runs(study_config, variants).items():
        for budget in budgets:
            run = budget_config(seed_zero_run, budget, _EVERY.value)
            workdir = Path(_WORKDIR.value) / f"{variant}_{budget}"
            trained_before = _last_checkpoint(run, workdir) == budget
            started = time.perf_counter()
            result = train_and_evaluate(run, workdir)
            seconds = None if trained_before else time.perf_counter() - started
            if result["status"] != "completed":
                raise SystemExit(f"copy_budget: {workdir} was interrupted at step "
                                 f"{result['step']}; rerun to resume")
            steps = list(range(_EVERY.value, budget, _EVERY.value)) if _EVERY.value else []
            for step, gap in copy_gaps(run, workdir, [*steps, budget]).items():
                rows.append(row(variant, budget, step, gap,
                                seconds if step == budget else None))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)  # as they come
    print(f"\n{jax.devices()[0].device_kind}, {package_versions()}\n")
    print(markdown(rows))
    if _JSON_OUT.value:
        Path(_JSON_OUT.value).write_text(json.dumps(
            {"rows": rows, "config": study_config.to_dict(), "variants": variants,
             "versions": package_versions()}, indent=1, default=str))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
