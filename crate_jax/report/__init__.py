"""The ablation study's comparison: tables with confidence intervals across variants and seeds,
built by `write_study_report` (`study_report`)."""
