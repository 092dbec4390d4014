"""Standardise keys, labels, gene symbols and counts, then QC, normalise and select HVGs; write the
QC's counts and warnings (a rule that matched no gene) to qc.json for the summary."""

import json

from pertflow.data.io import read_h5ad, standardise
from pertflow.logs import log_to
from pertflow.data.preprocess import preprocess
from pertflow.utils import atomic_path, write_h5ad

with log_to(snakemake.log[0]) as log:
    spec, name = snakemake.params.spec, snakemake.wildcards.dataset
    adata = standardise(read_h5ad(snakemake.input[0]), spec, name)
    cells, genes = adata.shape
    adata = preprocess(adata, qc=spec["qc"], hvg=spec["hvg"])
    warnings = list(adata.uns.pop("qc_warnings", []))
    log.info("preprocessed: %d cells × %d genes", *adata.shape)
    write_h5ad(adata, snakemake.output.data)
    with atomic_path(snakemake.output.qc) as tmp:
        tmp.write_text(json.dumps({"cells": {"before": cells, "after": adata.n_obs},
                                   "genes": {"before": genes, "after": adata.n_vars},
                                   "warnings": warnings}, indent=2))
