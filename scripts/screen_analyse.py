"""Per perturbation: effect, responders, the Mixscape-like baseline and latent DEGs."""

import anndata as ad

from pertflow.logs import log_to
from pertflow.models import Model
from pertflow.screen.analysis import analyse
from pertflow.utils import atomic_path, write_h5ad

with log_to(snakemake.log[0]) as log:
    spec, out = snakemake.params.spec, snakemake.output
    cells, table, de = analyse(ad.read_h5ad(snakemake.input.cells),
                               Model.load(snakemake.input.model),
                               [Model.load(path) for path in snakemake.input.fold_models], spec,
                               seed=snakemake.params.seed,
                               n_permutations=spec["n_permutations"],
                               n_samples=spec["n_samples"])
    log.info("%d perturbations, %d with q < 0.05 in the cross-fitted salient latent, %d by the "
             "expression statistic", len(table), (table["q_value"] < 0.05).sum(),
             (table["expression_q_value"] < 0.05).sum())
    for frame, path in ((table, out.table), (de, out.latent_de)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    write_h5ad(cells, out.latents)
