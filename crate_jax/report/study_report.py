"""The study's report, built one way: `write_study_report(workdir)`.

The study stage calls it when its last run is finished, and `python -m crate_jax.report`
calls it to rebuild the report from the artifacts alone: its statistics are over runs and
need no random draws, so a rebuilt report is byte for byte the study's own.
"""

from __future__ import annotations

from pathlib import Path

from crate_jax.layout import StudyLayout
from crate_jax.report.ablation_table import build_table, study_controls, study_runs, write_table
from crate_jax.report.page import write_page
from crate_jax.report.validity import validity_report


def not_a_study(workdir: str | None) -> str | None:
    """Why `workdir` (a `--workdir` flag's value) holds no study to report on; None if it does."""
    manifest = StudyLayout(workdir or "").manifest
    if workdir is not None and manifest.exists():
        return None
    return (f"--workdir={workdir} holds no {manifest.name}: run the study first "
            "(python -m crate_jax.main --config=configs/ablation.py ...)")


def write_study_report(workdir: str | Path) -> tuple[list[dict], Path]:
    """Writes `report/` (the table as JSON, CSV and Markdown, the figures and `index.html`)
    from the study's runs; returns the table's rows and the page's path."""
    report = StudyLayout(workdir).report
    rows = build_table(workdir)
    validity = validity_report(rows, study_runs(workdir), study_controls(workdir))
    write_table(rows, report.directory, validity)
    from crate_jax.report.plots import write_plots  # matplotlib: imported when a report is made

    figures = write_plots(workdir, report.directory)
    return rows, write_page(rows, workdir, report.directory, figures, validity)
