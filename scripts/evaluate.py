"""Score one prediction against the held-out truth, with the data's own ceiling of every score
and the score calibrated between the `control` prediction and that ceiling."""

import json

import anndata as ad
import numpy as np

from pertflow.data.io import perturbed_mean
from pertflow.keys import Keys
from pertflow.logs import log_to
from pertflow.benchmark.metrics import ceiling, read_degs, read_deg_weights, score
from pertflow.utils import atomic_path

with log_to(snakemake.log[0]) as log:
    read = {k: ad.read_h5ad(snakemake.input[k]) for k in ("prediction", "truth", "control")}
    degs = read_degs(snakemake.input.degs)
    reference = perturbed_mean(snakemake.input.train, Keys(**snakemake.params.experiment_keys),
                               read["truth"].var_names)
    w, seed = snakemake.wildcards, snakemake.params.seed
    result = {"dataset": w.dataset, "model": w.model, **snakemake.params.held_out, "seed": seed,
              **score(read["prediction"], read["truth"], read["control"], degs, reference, seed,
                      deg_weights_=read_deg_weights(snakemake.input.degs))}
    columns, centroids, reason = ceiling(read["prediction"], read["truth"], read["control"],
                                         reference, len(degs), seed,
                                         snakemake.params.min_cells,
                                         snakemake.params.ceiling_draws)
    if reason:
        log.warning("%s, %s, seed %s: %s", w.model, snakemake.params.held_out, seed, reason)
    result |= columns
    log.info("%s", result)
    # The centroid changes (mean minus control mean per gene) that the discrimination across
    # held-out groups needs; metrics_table reads and drops them.
    result["centroid_changes"] = {k: None if v is None else np.round(v, 6).tolist()
                                  for k, v in centroids.items()}
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
