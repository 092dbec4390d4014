"""The screen's input checks: fail early, before anything trains, naming the column or label at
fault and the fix."""

from __future__ import annotations

import logging
from typing import Iterable

import anndata as ad
import pandas as pd

from pertflow.data.preprocess import check_counts
from pertflow.errors import DataError
from pertflow.screen.mixscape import MIXSCAPE_NEIGHBORS, mixscape_split_by

log = logging.getLogger(__name__)


def check_screen(adata: ad.AnnData, perturbation_key: str, control: str,
                 covariates: Iterable[str], min_cells: int, counts_layer: str | None = None,
                 perturbations: Iterable[str] | None = None,
                 name: str = "dataset") -> list[str]:
    """Fail early, naming the column or label and the fix, on a screen that cannot be analysed;
    return the perturbations (control excluded) with at least ``min_cells`` cells."""
    where = f"dataset '{name}'"
    if perturbation_key not in adata.obs:
        raise DataError(f"{where}: obs column '{perturbation_key}' (perturbation_key) not found; "
                        f"columns: {', '.join(map(str, adata.obs.columns))}. Fix "
                        "`perturbation_key:`.")
    labels = adata.obs[perturbation_key].astype(str)
    present = sorted(labels.unique())
    if control not in present:
        raise DataError(f"{where}: no control cells: label '{control}' not in "
                        f"obs['{perturbation_key}'] (labels: {', '.join(present[:20])}). Fix "
                        "`control:` to the non-targeting guides' label.")
    # A label that differs from the control only in case or spaces would be analysed as a
    # knockout of its own; so would the control named in an explicit list.
    twins = [x for x in present if x != control
             and x.strip().casefold() == control.strip().casefold()]
    if twins:
        raise DataError(f"{where}: obs['{perturbation_key}'] label(s) {twins} equal the control "
                        f"label '{control}' up to case or spaces; map them to '{control}' "
                        f"(`rename: labels: {perturbation_key}:`) or drop those cells.")
    if perturbations is not None and control in set(perturbations):
        raise DataError(f"{where}: the control label '{control}' is listed among the "
                        "perturbations to analyse; remove it from `perturbations:`.")
    for key in covariates:
        if key not in adata.obs:
            raise DataError(f"{where}: covariate column '{key}' not in obs; columns: "
                            f"{', '.join(map(str, adata.obs.columns))}. Fix `covariates:`.")
        values = adata.obs[key]
        if values.isna().any():
            raise DataError(f"{where}: covariate '{key}' is missing for {int(values.isna().sum())} "
                            "cells; fill it in or drop those cells.")
        per_category = labels.groupby(values.astype(str).to_numpy()).nunique()
        alone = per_category.index[per_category.to_numpy() == 1].tolist()
        if alone:
            owner = labels[values.astype(str).isin(alone).to_numpy()].iloc[0]
            raise DataError(
                f"{where}: covariate '{key}' category {alone[0]!r} holds cells of one "
                f"perturbation only ('{owner}'), so its effect cannot be told from that "
                f"perturbation's; merge the category with another, drop its cells, or leave "
                f"'{key}' out of `covariates:`.")
    # The Mixscape-like baseline averages neighbours among the controls of each category of
    # its split_by, so each category needs more than that many.
    split_by = mixscape_split_by(covariates)
    controls = labels[labels == control]
    per_category = controls.groupby(adata.obs.loc[controls.index, split_by].astype(str)
                                    .to_numpy()).size() if split_by else \
        pd.Series({"the screen": len(controls)})
    few = per_category[per_category <= MIXSCAPE_NEIGHBORS]
    if len(few):
        where_few = f"{split_by} category {few.index[0]!r}" if split_by else "the screen"
        raise DataError(f"{where}: only {few.iloc[0]} control cells ('{control}') in {where_few}; "
                        f"the Mixscape-like baseline needs more than {MIXSCAPE_NEIGHBORS}: add "
                        "control cells" + (f", or merge the category with another or leave "
                                           f"'{split_by}' out of `covariates:`" if split_by
                                           else "") + ".")
    X = adata.X if counts_layer is None else adata.layers[counts_layer] \
        if counts_layer in adata.layers else None
    if X is None:
        raise DataError(f"{where}: counts layer '{counts_layer}' not found; layers: "
                        f"{list(adata.layers) or 'none'}.")
    check_counts(X, f"{where} counts ({counts_layer or 'X'})")
    wanted = [x for x in present if x != control] if perturbations is None \
        else [str(x) for x in perturbations]
    missing = sorted(set(wanted) - set(present))
    if missing:
        raise DataError(f"{where}: perturbation(s) {missing} not in obs['{perturbation_key}']; "
                        "fix `perturbations:`.")
    n = labels.value_counts()
    kept = [x for x in wanted if n[x] >= min_cells]
    if len(kept) < len(wanted):
        log.info("%s: dropped %d perturbation(s) with fewer than %d cells: %s", where,
                 len(wanted) - len(kept), min_cells, sorted(set(wanted) - set(kept)))
    if not kept:
        raise DataError(f"{where}: no perturbation has {min_cells} cells or more; lower "
                        "`min_cells:`.")
    return kept
