"""The ablation study's comparison: tables with confidence intervals across variants and seeds."""
