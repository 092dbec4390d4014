"""Score one prediction against the held-out truth."""

import json

import anndata as ad

from pertflow.data.io import perturbed_mean
from pertflow.keys import Keys
from pertflow.logs import log_to
from pertflow.benchmark.metrics import read_degs, score
from pertflow.utils import atomic_path

with log_to(snakemake.log[0]) as log:
    read = {k: ad.read_h5ad(snakemake.input[k]) for k in ("prediction", "truth", "control")}
    degs = read_degs(snakemake.input.degs)
    reference = perturbed_mean(snakemake.input.train, Keys(**snakemake.params.experiment_keys),
                               read["truth"].var_names)
    w = snakemake.wildcards
    result = {"dataset": w.dataset, "model": w.model, **snakemake.params.held_out,
              "seed": snakemake.params.seed,
              **score(read["prediction"], read["truth"], read["control"], degs, reference,
                      snakemake.params.seed)}
    log.info("%s", result)
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
