"""Violins of the top DEGs of every held-out group: control, real perturbed, and each model's
first-seed prediction side by side (PNG and PDF per group)."""

from pathlib import Path

import anndata as ad

from pertflow.logs import log_to
from pertflow.metrics import read_degs
from pertflow.plots import model_colors, save, top_deg_violins

with log_to(snakemake.log[0]) as log:
    groups, models = snakemake.params.groups, snakemake.params.models
    predictions = snakemake.input.predictions  # every group's models, in config order
    out = Path(snakemake.output[0])
    for i, group in enumerate(groups):
        genes = read_degs(snakemake.input.degs[i])[:snakemake.params.n_genes]
        log.info("%s: top DEGs %s", group, genes)
        preds = {model: ad.read_h5ad(path) for model, path in
                 zip(models, predictions[i * len(models):(i + 1) * len(models)])}
        fig = top_deg_violins(ad.read_h5ad(snakemake.input.controls[i]),
                              ad.read_h5ad(snakemake.input.truths[i]), preds, genes,
                              model_colors(models), f"held-out group {group}")
        save(fig, [out / f"{group}.png", out / f"{group}.pdf"])
