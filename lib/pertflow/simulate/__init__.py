"""Seeded simulations with a known truth (workflow/rules/data.smk, screen.smk): a perturbation
experiment for the benchmark and a Perturb-seq screen."""
