"""Means with 95% intervals per model and held-out group, a plain-words summary of which model
wins on which metric against the best baseline (and what the transferring models chose), and the
same verdict as reStructuredText for the report's front page."""

import pandas as pd

from pertflow.logs import log_to
from pertflow.summary import summarise, summary_markdown
from pertflow.utils import atomic_path
from pertflow.verdict import verdict_rst

with log_to(snakemake.log[0]) as log:
    dataset, baselines = snakemake.wildcards.dataset, snakemake.params.baselines
    table = pd.read_csv(snakemake.input.metrics, dtype={"group": str})
    transfer = pd.read_csv(snakemake.input.transfer, dtype={"group": str})
    with atomic_path(snakemake.output.table) as tmp:
        summarise(table).to_csv(tmp, index=False, float_format="%.6g")
    text = summary_markdown(dataset, table, baselines, transfer)
    log.info("%s", text)
    with atomic_path(snakemake.output.text) as tmp:
        tmp.write_text(text)
    with atomic_path(snakemake.output.verdict) as tmp:
        tmp.write_text(verdict_rst(dataset, table, baselines, transfer), encoding="utf-8")
