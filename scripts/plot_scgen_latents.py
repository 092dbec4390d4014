"""The latent spaces of every scGen entry (e.g. the encoder normalisation ablation, norm: batch |
layer | none) side by side over all cells: UMAP by group, Leiden clusters with their ARI against
the groups, and condition."""

import anndata as ad

from pertflow.keys import dataset_keys
from pertflow.logs import log_to
from pertflow.models import get_model_class
from pertflow.plots import latent_comparison, save

with log_to(snakemake.log[0]) as log:
    keys = dataset_keys(snakemake.params.spec)
    cells = ad.read_h5ad(snakemake.input.cells)
    latents = {}
    for name, path in zip(snakemake.params.models, snakemake.input.models):
        model = get_model_class("scgen").load(path)
        log.info("%s: norm = %s", name, model.params["norm"])
        latents[f"{name} (norm: {model.params['norm']})"] = model.embed(cells)["X_scgen"]
    fig, aris = latent_comparison(cells.obs, latents, keys.group, keys.condition,
                                  seed=snakemake.params.seed)
    log.info("Leiden ARI against %s: %s", keys.group, aris)
    save(fig, [snakemake.output.png, snakemake.output.pdf])
