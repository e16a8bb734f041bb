"""Rebuild a study's comparison from its artifacts: `python -m crate_jax.report --workdir=DIR`."""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from crate_jax.report.ablation_table import build_table, markdown_table, write_table
from crate_jax.report.page import write_page
from crate_jax.report.plots import write_plots

_WORKDIR = flags.DEFINE_string("workdir", None, "The study's workdir (holding study.json).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    workdir = Path(_WORKDIR.value)
    if not (workdir / "study.json").exists():
        raise app.UsageError(f"{workdir} holds no study.json: run the study first "
                             "(python -m crate_jax.main --config=configs/ablation.py ...)")
    rows = build_table(workdir)
    write_table(rows, workdir / "report")
    page = write_page(workdir, workdir / "report", write_plots(workdir, workdir / "report"))
    print(markdown_table(rows, answer_last=True))
    print(f"report: open {page}")


if __name__ == "__main__":
    app.run(main)
