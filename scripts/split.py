"""Write one leave-one-group-out split and the held-out cells' top DEGs (truth vs control)."""

import anndata as ad

from pertflow.keys import Keys
from pertflow.logs import log_to
from pertflow.benchmark.metrics import top_degs
from pertflow.data.splits import choose_held_out, split
from pertflow.utils import atomic_path, write_h5ad

with log_to(snakemake.log[0]) as log:
    keys = Keys(**snakemake.params.experiment_keys)
    dataset, group = snakemake.wildcards.dataset, snakemake.params.held_out["group"]
    adata = ad.read_h5ad(snakemake.input.data)
    # The group must still have `min_cells` control and perturbed cells after QC. Read from the
    # config, not a param: it does not change the split, so changing it must not rerun training.
    choose_held_out(adata, keys, [keys.perturbed], [group],
                    snakemake.config["datasets"][dataset]["min_cells"], dataset)
    parts = split(adata, keys, group, snakemake.params.hide_other_perturbations)
    for part, adata in parts.items():
        log.info("%s: %d cells", part, adata.n_obs)
        write_h5ad(adata, snakemake.output[part])
    degs = top_degs(parts["truth"], parts["control"], snakemake.params.n_top_degs)
    with atomic_path(snakemake.output.degs) as tmp:
        degs.to_csv(tmp, index=False)
