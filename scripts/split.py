"""Write one leave-one-group-out split and the held-out cells' top DEGs (truth vs control)."""

import json
from pathlib import Path

import anndata as ad

from pertflow.errors import DataError
from pertflow.keys import Keys
from pertflow.logs import log_to
from pertflow.benchmark.metrics import top_degs
from pertflow.data.splits import split
from pertflow.utils import atomic_path, write_h5ad

with log_to(snakemake.log[0]) as log:
    dataset, name = snakemake.wildcards.dataset, snakemake.wildcards.split
    # The checkpoint checked its splits' cells after QC; a split it did not choose (a target
    # asked for by path) would have too few.
    chosen = json.loads(Path(snakemake.input.splits).read_text())["splits"]
    if name not in chosen:
        raise DataError(
            f"dataset '{dataset}': '{name}' is not one of the splits chosen in "
            f"{snakemake.input.splits} ({', '.join(chosen)}); ask for one of those, or add it "
            "to `held_out:` (it needs `min_cells` control and perturbed cells after QC).")
    keys = Keys(**snakemake.params.experiment_keys)
    adata = ad.read_h5ad(snakemake.input.data)
    parts = split(adata, keys, snakemake.params.held_out["group"],
                  snakemake.params.hide_other_perturbations)
    for part, adata in parts.items():
        log.info("%s: %d cells", part, adata.n_obs)
        write_h5ad(adata, snakemake.output[part])
    degs = top_degs(parts["truth"], parts["control"], snakemake.params.n_top_degs)
    with atomic_path(snakemake.output.degs) as tmp:
        degs.to_csv(tmp, index=False)
