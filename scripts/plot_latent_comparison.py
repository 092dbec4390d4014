"""The latent spaces of the config entries that share a model class (e.g. scGen's encoder
normalisation ablation, norm: batch | layer | none) side by side over all cells: UMAP by group,
Leiden clusters with their ARI against the groups, and condition. A model with several latent
spaces (contrastiveVI's background and salient) gets a column for each."""

import anndata as ad

from pertflow.keys import Keys
from pertflow.logs import log_to
from pertflow.models import get_model_class
from pertflow.benchmark.figure_inputs import differing_params
from pertflow.benchmark.figures import latent_comparison, save

with log_to(snakemake.log[0]) as log:
    keys = Keys(**snakemake.params.experiment_keys)
    entries = snakemake.params.entries
    cells = ad.read_h5ad(snakemake.input.cells)
    models = {name: get_model_class(entries[name]["model"], entries[name]["module"]).load(path)
              for name, path in snakemake.params.models.items()}
    latents = {}
    for name, differing in differing_params({n: m.params for n, m in models.items()}).items():
        log.info("%s: %s", name, ", ".join(f"{k} = {v}" for k, v in differing.items()) or
                 "the only entry of its class")
        label = f"{name} ({', '.join(f'{k}: {v}' for k, v in differing.items())})" \
            if differing else name
        embedded = models[name].embed(cells)
        for key, latent in embedded.items():
            latents[label if len(embedded) == 1 else f"{label} {key}"] = latent
    fig, aris = latent_comparison(cells.obs, latents, keys.group, keys.condition,
                                  seed=snakemake.params.seed)
    log.info("Leiden ARI against %s: %s", keys.group, aris)
    save(fig, [snakemake.output.png, snakemake.output.pdf])
