"""The study's report, built one way: `write_study_report(workdir)`.

The study stage calls it when its last run is finished, and `python -m crate_jax.report`
calls it to rebuild the report from the artifacts alone; both take the bootstrap settings
(`interp.bootstrap_samples`, `interp.seed`) from the config the study saved before its runs,
so a rebuilt report is byte for byte the study's own.
"""

from __future__ import annotations

import json
from pathlib import Path

from crate_jax.layout import RunLayout, StudyLayout
from crate_jax.report.ablation_table import build_table, study_runs, write_table
from crate_jax.report.page import write_page
from crate_jax.report.plots import write_plots


def not_a_study(workdir: str | None) -> str | None:
    """Why `workdir` (a `--workdir` flag's value) holds no study to report on; None if it does."""
    manifest = StudyLayout(workdir or "").manifest
    if workdir is not None and manifest.exists():
        return None
    return (f"--workdir={workdir} holds no {manifest.name}: run the study first "
            "(python -m crate_jax.main --config=configs/ablation.py ...)")


def report_settings(workdir: str | Path) -> dict[str, int]:
    """`{"samples", "seed"}` of the report's bootstrap intervals, from the study's saved config.

    A study from before studies saved their config has the same `interp` settings in the
    config of each of its runs (the study shares that section with every run), so the first
    run's is used, with one line that says so."""
    study = StudyLayout(workdir)
    if study.config.exists():
        interp = json.loads(study.config.read_text())["interp"]
    else:
        run_dir = next(iter(study_runs(workdir).values()))[0][1]
        interp = json.loads(RunLayout(run_dir).config.read_text())["interp"]
        print(f"report: {study.config} is missing (the study predates saved study configs); "
              f"using the interp settings its runs saved: bootstrap_samples="
              f"{interp['bootstrap_samples']}, seed={interp['seed']}", flush=True)
    return {"samples": interp["bootstrap_samples"], "seed": interp["seed"]}


def write_study_report(workdir: str | Path) -> tuple[list[dict], Path]:
    """Writes `report/` (the table as JSON, CSV and Markdown, the figures and `index.html`)
    from the study's runs; returns the table's rows and the page's path."""
    report = StudyLayout(workdir).report
    rows = build_table(workdir, **report_settings(workdir))
    write_table(rows, report.directory)
    figures = write_plots(workdir, report.directory)
    return rows, write_page(rows, workdir, report.directory, figures)
