"""UMAPs of each latent space a model exposes, over all cells, coloured by condition, group,
cell-cycle phase (when the genes are present) and the dataset's extra `latent_colors`."""

from pathlib import Path

import anndata as ad

from pertflow.keys import Keys
from pertflow.logs import log_to
from pertflow.models import get_model_class
from pertflow.benchmark.figures import latent_umaps, save
from pertflow.data.preprocess import score_cell_cycle

with log_to(snakemake.log[0]) as log:
    keys, entry = Keys(**snakemake.params.experiment_keys), snakemake.params.entry
    model = get_model_class(entry["model"], entry["module"]).load(snakemake.input.model[0])
    cells = ad.read_h5ad(snakemake.input.cells)
    group = snakemake.params.held_out["group"]  # the first split's, whose model this is
    cells.obs["held out"] = (cells.obs[keys.group] == group).map({True: group, False: "other"})
    colors = [keys.condition, keys.group, "held out"]
    if score_cell_cycle(cells, seed=snakemake.params.seed, required=False):
        colors.append("phase")
    colors += [c for c in snakemake.params.latent_colors if c not in colors]
    out = Path(snakemake.output[0])
    for key, latent in model.embed(cells).items():
        cells.obsm[key] = latent
        log.info("UMAP of %s (%d dims), coloured by %s", key, latent.shape[1], colors)
        save(latent_umaps(cells, key, colors, seed=snakemake.params.seed),
             [out / f"{key}.png", out / f"{key}.pdf"])
