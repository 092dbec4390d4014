"""Decide which groups are held out; groups skipped for too few cells are named in the log."""

import json

import anndata as ad

from pertflow.keys import Keys
from pertflow.logs import log_to
from pertflow.splits import cell_counts, choose_held_out_groups
from pertflow.utils import atomic_path

with log_to(snakemake.log[0]) as log:
    keys = Keys(**snakemake.params.experiment_keys)
    adata = ad.read_h5ad(snakemake.input[0], backed="r")
    log.info("cells per group and condition:\n%s", cell_counts(adata, keys).to_string())
    groups = choose_held_out_groups(adata, keys, snakemake.params.held_out,
                                   snakemake.params.min_cells, snakemake.wildcards.dataset)
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps({"groups": groups}, indent=2))
