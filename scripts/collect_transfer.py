"""The transfer choices (settings, α, weights per training group) every prediction records, as
one table; a dataset whose models do not transfer gets the header alone."""

from pathlib import Path

from pertflow.logs import log_to
from pertflow.summary import WEIGHT_PREFIX, read_transfer, transfer_table
from pertflow.utils import atomic_path

with log_to(snakemake.log[0]) as log:
    runs = []
    for (model, group, seed), path in zip(snakemake.params.runs, snakemake.input, strict=True):
        if Path(path).parts[-4:-1] != (model, group, f"seed{seed}"):
            raise RuntimeError(f"{path} is not the prediction of {model}, {group}, seed {seed}")
        runs.append({"model": model, "group": group, "seed": seed,
                     "transfer": read_transfer(path)})
    table = transfer_table(runs)
    log.info("%d of %d runs transfer:\n%s", len(table), len(runs),
             table.drop(columns=[c for c in table.columns if c.startswith(WEIGHT_PREFIX)])
             .to_string())
    with atomic_path(snakemake.output[0]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
