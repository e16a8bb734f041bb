"""Rebuild a study's report from its artifacts: `python -m crate_jax.report --workdir=DIR`.

The same report the study writes (`study_report.write_study_report`), with the same settings."""

from __future__ import annotations

from absl import app, flags

from crate_jax.report.ablation_table import markdown_table
from crate_jax.report.study_report import not_a_study, write_study_report

_WORKDIR = flags.DEFINE_string("workdir", None, "The study's workdir (holding study.json).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    problem = not_a_study(_WORKDIR.value)
    if problem:
        raise app.UsageError(problem)
    rows, page = write_study_report(_WORKDIR.value)
    print(markdown_table(rows, answer_last=True))
    print(f"report: open {page}")


if __name__ == "__main__":
    app.run(main)
