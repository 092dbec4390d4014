"""Train contrastiveVI on all cells of the screen, or on those outside one cross-fitting fold,
and save it."""

import anndata as ad

from pertflow.logs import log_to
from pertflow.screen.analysis import model_params, train

with log_to(snakemake.log[0]) as log:
    spec, seed, fold = snakemake.params.spec, snakemake.params.seed, snakemake.params.fold
    cells = ad.read_h5ad(snakemake.input[0])
    log.info("training contrastiveVI on %s of %d cells × %d genes, seed %d, params %s",
             "all" if fold is None else f"those outside fold {fold}", *cells.shape, seed,
             model_params(spec))
    train(cells, spec, seed, fold=fold).save(snakemake.output[0])
