"""Seeded simulations with a known truth (workflow/rules/data.smk, screen.smk): a perturbation
experiment for the benchmark (``experiment``) and a Perturb-seq screen (``screen``), both drawing
their counts from one gamma-Poisson model (``counts``)."""
