"""Train contrastiveVI on all cells of the screen and save it."""

import anndata as ad

from pertflow.logs import log_to
from pertflow.screen_analysis import model_params, train

with log_to(snakemake.log[0]) as log:
    spec, seed = snakemake.params.spec, snakemake.params.seed
    cells = ad.read_h5ad(snakemake.input[0])
    log.info("training contrastiveVI on %d cells × %d genes, seed %d, params %s", *cells.shape,
             seed, model_params(spec))
    train(cells, spec, seed).save(snakemake.output[0])
