"""Check the screen, then QC, normalise, score the cell cycle and select HVGs."""

from pertflow.data.io import read_h5ad
from pertflow.logs import log_to
from pertflow.screen.analysis import prepare
from pertflow.utils import write_h5ad

with log_to(snakemake.log[0]):
    cells = prepare(read_h5ad(snakemake.input[0]), snakemake.params.spec,
                    snakemake.wildcards.screen, seed=snakemake.params.seed)
    write_h5ad(cells, snakemake.output[0])
