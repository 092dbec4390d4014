"""R² bars per held-out group and model."""

import pandas as pd

from pertflow.logs import log_to
from pertflow.plots import model_colors, r2_bars, save

with log_to(snakemake.log[0]):
    metrics = pd.read_csv(snakemake.input[0])
    fig = r2_bars(metrics, f"r2_{snakemake.wildcards.metric}",
                  model_colors(snakemake.params.models))
    save(fig, [snakemake.output.png, snakemake.output.pdf])
