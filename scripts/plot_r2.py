"""R² bars per held-out group and model; with several perturbations, one row per perturbation."""

import pandas as pd

from pertflow.logs import log_to
from pertflow.benchmark.figures import model_colors, r2_bars, save
from pertflow.benchmark.summary import perturbations_of

with log_to(snakemake.log[0]) as log:
    metrics = pd.read_csv(snakemake.input[0])
    log.info("perturbations in the table: %s", perturbations_of(metrics) or "(no column)")
    fig = r2_bars(metrics, f"r2_{snakemake.wildcards.metric}",
                  model_colors(snakemake.params.models))
    save(fig, [snakemake.output.png, snakemake.output.pdf])
