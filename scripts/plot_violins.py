"""Violins of the top DEGs of every split (held-out group, or perturbation/group): control, real
perturbed, and each model's first-seed prediction side by side (PNG and PDF per split)."""

from pathlib import Path

import anndata as ad

from pertflow.logs import log_to
from pertflow.benchmark.metrics import read_degs
from pertflow.benchmark.figures import model_colors, save, top_deg_violins

with log_to(snakemake.log[0]) as log:
    colors = model_colors(snakemake.params.models)
    out = Path(snakemake.output[0])
    # {split: {"control", "truth", "degs", "predictions": {model: path}}}
    for split, files in snakemake.params.files.items():
        genes = read_degs(files["degs"])[:snakemake.params.n_genes]
        log.info("%s: top DEGs %s", split, genes)
        preds = {model: ad.read_h5ad(path) for model, path in files["predictions"].items()}
        fig = top_deg_violins(ad.read_h5ad(files["control"]), ad.read_h5ad(files["truth"]), preds,
                              genes, colors, f"held out: {split}")
        save(fig, [out / f"{split}.png", out / f"{split}.pdf"])
