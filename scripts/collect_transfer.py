"""The transfer choices (settings, α, weights per training group) every prediction records, as
one table; a dataset whose models do not transfer gets the header alone."""

from pertflow.logs import log_to
from pertflow.benchmark.summary import WEIGHT_PREFIX, read_transfer, transfer_table
from pertflow.utils import atomic_path

with log_to(snakemake.log[0]) as log:
    # {prediction path: {"model", "perturbation", "group", "seed"}}
    runs = [{**run, "transfer": read_transfer(path)}
            for path, run in snakemake.params.runs.items()]
    table = transfer_table(runs)
    log.info("%d of %d runs transfer:\n%s", len(table), len(runs),
             table.drop(columns=[c for c in table.columns if c.startswith(WEIGHT_PREFIX)])
             .to_string())
    with atomic_path(snakemake.output[0]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
