"""One model's first-seed prediction of every split (held-out group, or perturbation/group)
against the real perturbed cells: scatter of per-gene means and of per-gene variances (scGen's
Figure 2), and a joint UMAP of the group's control, real and predicted perturbed cells; each as
PNG and PDF, named by the split."""

from pathlib import Path

import anndata as ad

from pertflow.logs import log_to
from pertflow.benchmark.figures import (
    GENE_STATISTICS,
    expression_scatter,
    held_out_umap,
    model_colors,
    save,
)
from pertflow.benchmark.metrics import read_degs

with log_to(snakemake.log[0]) as log:
    model, out = snakemake.wildcards.model, snakemake.output
    color = model_colors(snakemake.params.models)[model]
    # {split: {"control", "truth", "degs", "predictions": {model: path}}}
    for split, files in snakemake.params.files.items():
        pred, truth = ad.read_h5ad(files["predictions"][model]), ad.read_h5ad(files["truth"])
        names = read_degs(files["degs"])
        title = f"{model}: {split}"
        for statistic, directory in zip(GENE_STATISTICS, (out.mean, out.variance)):
            save(expression_scatter(pred, truth, names, title, statistic),
                 [Path(directory) / f"{split}.{ext}" for ext in ("png", "pdf")])
        log.info("%s: UMAP of %d predicted, %d real and control cells", split, pred.n_obs,
                 truth.n_obs)
        save(held_out_umap(ad.read_h5ad(files["control"]), truth, pred, title, color,
                           seed=snakemake.params.seed),
             [Path(out.umap) / f"{split}.{ext}" for ext in ("png", "pdf")])
