"""Simulate the screen declared under `source: simulate:`
(pertflow.simulate.screen.simulate_screen)."""

from pertflow.logs import log_to
from pertflow.simulate.screen import simulate_screen
from pertflow.utils import write_h5ad

with log_to(snakemake.log[0]) as log:
    adata = simulate_screen(**snakemake.params.simulate)
    log.info("simulated screen: %d cells × %d genes with %s", *adata.shape,
             snakemake.params.simulate)
    write_h5ad(adata, snakemake.output[0])
