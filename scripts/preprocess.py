"""Standardise keys, labels, gene symbols and counts, then QC, normalise and select HVGs; write the
QC's counts and warnings (a rule that matched no gene) to qc.json for the summary."""

import json

from pertflow.data.io import read_h5ad, standardise
from pertflow.logs import log_to
from pertflow.data.preprocess import preprocess
from pertflow.utils import atomic_path, write_h5ad

with log_to(snakemake.log[0]) as log:
    spec, name = snakemake.params.spec, snakemake.wildcards.dataset
    # `held_out` and `min_cells` are checked here too, so that a listed group that is absent or
    # lacks cells fails before QC; they are read from the config, not given as params, because
    # they do not change the preprocessed data (a params change would rerun every training).
    dataset = snakemake.config["datasets"][name]
    checks = {key: dataset[key] for key in ("held_out", "min_cells") if key in dataset}
    raw = read_h5ad(snakemake.input[0])
    adata = standardise(raw, {**spec, **checks}, name)
    cells, genes = adata.shape
    adata = preprocess(adata, qc=spec.get("qc"), hvg=spec.get("hvg"))
    warnings = list(adata.uns.pop("qc_warnings", []))
    log.info("preprocessed: %d cells × %d genes", *adata.shape)
    write_h5ad(adata, snakemake.output.data)
    with atomic_path(snakemake.output.qc) as tmp:
        tmp.write_text(json.dumps({"cells": {"before": cells, "after": adata.n_obs},
                                   "genes": {"before": genes, "after": adata.n_vars},
                                   "warnings": warnings}, indent=2))
