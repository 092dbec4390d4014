"""Training seconds and peak memory per model, from the train_predict jobs' benchmark files."""

import pandas as pd

from pertflow.logs import log_to
from pertflow.benchmark.figures import cost_bars, model_colors, save

with log_to(snakemake.log[0]) as log:
    # {benchmark path: {"model", "perturbation", "group", "seed"}}
    runs = [pd.read_csv(path, sep="\t").assign(**run)
            for path, run in snakemake.params.runs.items()]
    benchmarks = pd.concat(runs, ignore_index=True)
    log.info("mean per model:\n%s",
             benchmarks.groupby("model")[["s", "max_rss"]].mean().to_string())
    save(cost_bars(benchmarks, model_colors(benchmarks["model"].unique().tolist())),
         [snakemake.output.png, snakemake.output.pdf])
