"""Collect every run's metrics into one tidy table (a row per model, perturbation, held-out group
and seed)."""

import json
from pathlib import Path

from pertflow.logs import log_to
from pertflow.benchmark.summary import metrics_table
from pertflow.utils import atomic_path

with log_to(snakemake.log[0]) as log:
    table = metrics_table([json.loads(Path(path).read_text()) for path in snakemake.input.metrics])
    log.info("mean over groups and seeds:\n%s",
             table.groupby(["perturbation", "model"])[["r2_mean_all", "r2_mean_top100"]].mean()
             .to_string())
    with atomic_path(snakemake.output[0]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
