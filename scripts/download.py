"""Download the dataset declared under `source: url:`, verifying its sha256 when given."""

from pertflow.data.io import download
from pertflow.logs import log_to

with log_to(snakemake.log[0]):
    source = snakemake.params.source
    download(source["url"], snakemake.output[0], sha256=source.get("sha256"),
             retries=source["retries"])
