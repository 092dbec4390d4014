"""Leave-one-group-out splits: the held-out group's perturbed cells are the truth and never train."""

from __future__ import annotations

import logging

import anndata as ad
import pandas as pd

from pertflow.errors import DataError
from pertflow.keys import Keys

log = logging.getLogger(__name__)


def cell_counts(adata: ad.AnnData, keys: Keys) -> pd.DataFrame:
    """Cells per group (rows) and condition (columns: control, perturbed)."""
    table = pd.crosstab(adata.obs[keys.group], adata.obs[keys.condition])
    return table.reindex(columns=[keys.control, keys.perturbed], fill_value=0)


def choose_held_out_groups(adata: ad.AnnData, keys: Keys, held_out: str | list[str],
                          min_cells: int, dataset: str) -> list[str]:
    """``all``: every group with at least ``min_cells`` control and perturbed cells; skipped
    groups are logged with their counts. A list: each must exist and have enough cells."""
    counts = cell_counts(adata, keys)
    enough = (counts[keys.control] >= min_cells) & (counts[keys.perturbed] >= min_cells)
    if held_out == "all":
        for group in counts.index[~enough]:
            log.warning("dataset '%s': not holding out group '%s': %d control and %d perturbed "
                        "cells, fewer than min_cells=%d", dataset, group,
                        counts.at[group, keys.control], counts.at[group, keys.perturbed], min_cells)
        chosen = [str(g) for g in counts.index[enough]]
        if not chosen:
            raise DataError(f"dataset '{dataset}': no group in '{keys.group}' has {min_cells} "
                            "control and perturbed cells; lower `min_cells` or check the labels.")
    else:
        chosen = list(held_out)
        for group in chosen:
            if group not in counts.index:
                raise DataError(
                    f"dataset '{dataset}': held-out group '{group}' not found in "
                    f"obs['{keys.group}'] (groups: {', '.join(map(str, counts.index))}). "
                    "Fix `held_out:`.")
            if not enough[group]:
                raise DataError(
                    f"dataset '{dataset}': held-out group '{group}' has "
                    f"{counts.at[group, keys.control]} control and "
                    f"{counts.at[group, keys.perturbed]} perturbed cells; it needs at least "
                    f"min_cells={min_cells} of each. Remove it from `held_out:` or lower min_cells.")
    other_perturbed = counts[keys.perturbed].sum() - counts.loc[chosen, keys.perturbed].min()
    if other_perturbed == 0:
        raise DataError(f"dataset '{dataset}': training would have no perturbed cells; at least "
                        "two groups need perturbed cells.")
    log.info("dataset '%s': holding out %s", dataset, chosen)
    return chosen


def split(adata: ad.AnnData, keys: Keys, group: str) -> dict[str, ad.AnnData]:
    """``train``: every cell except the group's perturbed ones; ``control``: the group's control
    cells (the model's input); ``truth``: the group's perturbed cells (never seen in training)."""
    in_group = (adata.obs[keys.group] == group).to_numpy()
    perturbed = (adata.obs[keys.condition] == keys.perturbed).to_numpy()
    control = (adata.obs[keys.condition] == keys.control).to_numpy()
    return {
        "train": adata[~(in_group & perturbed)].copy(),
        "control": adata[in_group & control].copy(),
        "truth": adata[in_group & perturbed].copy(),
    }
