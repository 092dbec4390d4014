"""UMAPs of the salient, background and PCA spaces, and the ranked targets."""

import anndata as ad
import pandas as pd

from pertflow.logs import log_to
from pertflow.benchmark.figures import save
from pertflow.screen.figures import ranked_figure, umap_figure

with log_to(snakemake.log[0]):
    cells = ad.read_h5ad(snakemake.input.latents)
    save(umap_figure(cells, snakemake.params.spec, seed=snakemake.params.seed),
         [snakemake.output.umaps])
    save(ranked_figure(pd.read_csv(snakemake.input.table)), [snakemake.output.ranked])
