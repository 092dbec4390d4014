"""scGen's Figure 3 for one model of a dataset of several perturbations: per perturbation, the
first-seed prediction of one held-out group against its real perturbed cells (per-gene means, top
DEGs labelled), beside the model's R² on the top DEGs of every group held out under it."""

import anndata as ad
import pandas as pd

from pertflow.logs import log_to
from pertflow.benchmark.metrics import read_degs
from pertflow.benchmark.figures import model_colors, perturbation_panels, save

with log_to(snakemake.log[0]) as log:
    model = snakemake.wildcards.model
    metrics = pd.read_csv(snakemake.input.metrics)
    panels = {}
    # {split: {"truth", "degs", "predictions": {model: path}}}, one split per perturbation
    for split, files in snakemake.params.files.items():
        held_out = snakemake.params.held_out[split]  # {"perturbation", "group"} by split
        log.info("%s: scatter of held-out group '%s' (split %s)", held_out["perturbation"],
                 held_out["group"], split)
        panels[held_out["perturbation"]] = {
            "group": held_out["group"], "pred": ad.read_h5ad(files["predictions"][model]),
            "truth": ad.read_h5ad(files["truth"]), "degs": read_degs(files["degs"])}
    fig = perturbation_panels(panels, metrics, model,
                              model_colors(snakemake.params.models)[model])
    save(fig, [snakemake.output.png, snakemake.output.pdf])
