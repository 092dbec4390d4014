"""Means with 95% intervals per model and held-out group, and a plain-words summary of which model
wins on which metric against the best baseline."""

import pandas as pd

from pertflow.logs import log_to
from pertflow.summary import summarise, summary_markdown
from pertflow.utils import atomic_path

with log_to(snakemake.log[0]) as log:
    table = pd.read_csv(snakemake.input[0], dtype={"group": str})
    with atomic_path(snakemake.output.table) as tmp:
        summarise(table).to_csv(tmp, index=False, float_format="%.6g")
    text = summary_markdown(snakemake.wildcards.dataset, table, snakemake.params.baselines)
    log.info("%s", text)
    with atomic_path(snakemake.output.text) as tmp:
        tmp.write_text(text)
