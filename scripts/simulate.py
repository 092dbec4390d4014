"""Simulate the dataset declared under `source: simulate:`."""

from pertflow.logs import log_to
from pertflow.simulate.experiment import simulate
from pertflow.utils import write_h5ad

with log_to(snakemake.log[0]) as log:
    adata = simulate(**snakemake.params.simulate)
    log.info("simulated %d cells × %d genes with %s", *adata.shape, snakemake.params.simulate)
    write_h5ad(adata, snakemake.output[0])
