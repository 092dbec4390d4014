"""Every metric as a heatmap (models × splits, mean over seeds), and the models ranked by their
mean rank over metrics and splits. A split is a held-out group, or perturbation/group when the
table holds several perturbations."""

import pandas as pd

from pertflow.logs import log_to
from pertflow.benchmark.figures import (
    by_split,
    mean_ranks,
    metric_heatmaps,
    model_colors,
    present_metrics,
    ranking_bars,
    save,
    several_perturbations,
)
from pertflow.benchmark.metrics import METRICS

with log_to(snakemake.log[0]) as log:
    metrics = pd.read_csv(snakemake.input[0])
    present = present_metrics(metrics, METRICS)
    log.info("metrics in the table: %s", present)
    save(metric_heatmaps(metrics, METRICS),
         [snakemake.output.heatmap, snakemake.output.heatmap_pdf])
    ranks = mean_ranks(metrics, METRICS)
    log.info("mean rank per model:\n%s", ranks.to_string())
    n_scores = len(present) * by_split(metrics)["group"].nunique()
    split = "perturbation/group" if several_perturbations(metrics) else "group"
    save(ranking_bars(ranks, model_colors(snakemake.params.models), n_scores, split),
         [snakemake.output.ranking, snakemake.output.ranking_pdf])
