"""Scoring and reporting (workflow/rules/evaluate.smk, figures.smk): metrics, the tables and the
verdict they support, and the figures."""
