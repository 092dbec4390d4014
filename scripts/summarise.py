"""Means with 95% intervals per model, perturbation and held-out group, and the verdict (which
model wins on which metric against the best baseline, what the transferring models chose; per
perturbation where a dataset has several) in plain words and as reStructuredText for the report's
front page."""

import json
from pathlib import Path

import pandas as pd

from pertflow.benchmark.summary import summarise
from pertflow.benchmark.verdict import verdict_of
from pertflow.benchmark.verdict_text import as_markdown, as_rst
from pertflow.errors import DataError
from pertflow.logs import log_to
from pertflow.utils import atomic_path

with log_to(snakemake.log[0]) as log:
    dataset, baselines = snakemake.wildcards.dataset, snakemake.params.baselines
    # Perturbation and group names are text, whatever they look like; every paired comparison
    # pairs runs on (perturbation, group, seed), and each perturbation is judged on its own runs.
    names = {"perturbation": str, "group": str}
    table = pd.read_csv(snakemake.input.metrics, dtype=names)
    transfer = pd.read_csv(snakemake.input.transfer, dtype=names)
    for path, read in ((snakemake.input.metrics, table), (snakemake.input.transfer, transfer)):
        if "perturbation" not in read.columns:
            raise DataError(f"{path} has no perturbation column (it predates datasets of several "
                            "perturbations); delete it so that it is made again.")
    with atomic_path(snakemake.output.table) as tmp:
        summarise(table).to_csv(tmp, index=False, float_format="%.6g")
    # The preprocessing's warnings (e.g. a QC rule that matched no gene), repeated where the
    # results are read; an empty qc.json (a stand-in) has none.
    warnings = json.loads(Path(snakemake.input.qc).read_text() or "{}").get("warnings", [])
    verdict = verdict_of(dataset, table, baselines, transfer, warnings)
    text = as_markdown(verdict)
    log.info("%s", text)
    with atomic_path(snakemake.output.text) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_path(snakemake.output.verdict) as tmp:
        tmp.write_text(as_rst(verdict), encoding="utf-8")
