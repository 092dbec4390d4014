"""Decide which (perturbation, group) splits are held out; those skipped for too few cells are
named in the log."""

import json

import anndata as ad

from pertflow.keys import Keys
from pertflow.logs import log_to
from pertflow.data.splits import cell_counts, choose_held_out, names_several, perturbation_labels
from pertflow.utils import atomic_path

with log_to(snakemake.log[0]) as log:
    spec, dataset = snakemake.params.spec, snakemake.wildcards.dataset
    adata = ad.read_h5ad(snakemake.input[0], backed="r")
    condition = spec["condition_key"]
    perturbations = perturbation_labels(spec["perturbed"], spec["control"],
                                        adata.obs[condition].unique(), condition, dataset)
    keys = Keys(condition, spec["control"], perturbations[0], spec["group_key"])
    log.info("cells per group and condition:\n%s",
             cell_counts(adata, keys, perturbations).to_string())
    chosen = choose_held_out(adata, keys, perturbations, snakemake.params.held_out,
                             snakemake.params.min_cells, dataset)
    prefixed = names_several(spec["perturbed"])
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps({"splits": [h.name(prefixed) for h in chosen]}, indent=2))
