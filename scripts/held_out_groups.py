"""Decide which (perturbation, group) splits are held out, from the preprocessed cells: the one
check that each has `min_cells` control and perturbed cells (the split and training jobs read the
splits chosen here); those skipped for too few cells are named in the log."""

import json

import anndata as ad

from pertflow.keys import dataset_keys
from pertflow.logs import log_to
from pertflow.data.splits import cell_counts, choose_held_out, names_several, perturbation_labels
from pertflow.utils import atomic_path

with log_to(snakemake.log[0]) as log:
    plan, dataset = snakemake.params.plan, snakemake.wildcards.dataset
    adata = ad.read_h5ad(snakemake.input[0], backed="r")
    condition = plan["condition_key"]
    perturbations = perturbation_labels(plan["perturbed"], plan["control"],
                                        adata.obs[condition].unique(), condition, dataset)
    keys = dataset_keys(plan, perturbations[0])
    log.info("cells per group and condition:\n%s",
             cell_counts(adata, keys, perturbations).to_string())
    chosen = choose_held_out(adata, keys, perturbations, plan["held_out"], plan["min_cells"],
                             dataset)
    prefixed = names_several(plan["perturbed"])
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps({"splits": [h.name(prefixed) for h in chosen]}, indent=2))
