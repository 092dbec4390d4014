"""The Mixscape-like baseline (pertpy's ``Mixscape``, Papalexi et al. 2021): each cell's
perturbation signature against its control neighbours, and responder classes from it."""

from __future__ import annotations

import warnings
from typing import Iterable

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.neighbors import NearestNeighbors

from pertflow.errors import DataError
from pertflow.screen.responders import RESPONDER_THRESHOLD, fixed_component_mixture
from pertflow.screen.selection import perturbation_names
from pertflow.utils import dense

MIXSCAPE_LAYER = "X_pert"  # pertpy's names for the signature layer and the class columns
MIXSCAPE_NEIGHBORS = 20  # control cells averaged into each cell's perturbation signature


def mixscape_split_by(covariates: Iterable[str]) -> str | None:
    """The covariate within whose categories the Mixscape-like baseline picks control
    neighbours: the first one (batch or lane, by convention), or none."""
    return next(iter(covariates), None)


def perturbation_signature(adata: ad.AnnData, perturbation_key: str, control: str,
                           split_by: str | None = None, n_neighbors: int = MIXSCAPE_NEIGHBORS,
                           n_pcs: int = 40,
                           seed: int = 0) -> None:
    """pertpy's ``Mixscape.perturbation_signature`` written out: each cell's log-normalised
    expression minus the mean of its ``n_neighbors`` nearest control cells in a PCA of ``X``
    (within its ``split_by`` category, e.g. batch). Differs from pertpy in that a control cell's
    neighbours exclude itself (pertpy counts the cell among its own neighbours). Adds
    ``layers['X_pert']`` and ``obsm['X_pca']`` (if absent)."""
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    if not np.any(labels == control):
        raise DataError(f"no control cells labelled '{control}' in obs['{perturbation_key}']; "
                        "fix `control:`.")
    X = dense(adata.X).astype(np.float32)
    if "X_pca" not in adata.obsm:
        sc.pp.pca(adata, n_comps=min(n_pcs, min(X.shape) - 1), random_state=seed)
    pcs = adata.obsm["X_pca"][:, :n_pcs]
    groups = np.zeros(len(labels), int) if split_by is None \
        else pd.factorize(adata.obs[split_by].astype(str))[0]
    signature = np.empty_like(X)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        ctrl = rows[labels[rows] == control]
        if len(ctrl) <= n_neighbors:
            raise DataError(f"only {len(ctrl)} control cells in {split_by or 'the data'} "
                            f"category {g}; Mixscape needs more than n_neighbors={n_neighbors}: "
                            "lower n_neighbors or leave out split_by.")
        knn = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(pcs[ctrl])
        neighbours = knn.kneighbors(pcs[rows], return_distance=False)
        is_ctrl = labels[rows] == control
        # A control cell's first neighbour is itself: drop it; other cells drop the farthest.
        neighbours = np.where(is_ctrl[:, None], neighbours[:, 1:], neighbours[:, :-1])
        signature[rows] = X[rows] - X[ctrl][neighbours].mean(axis=1)
    adata.layers[MIXSCAPE_LAYER] = signature


def mixscape(adata: ad.AnnData, perturbation_key: str, control: str,
             split_by: str | None = None, n_neighbors: int = MIXSCAPE_NEIGHBORS, n_pcs: int = 40,
             min_de_genes: int = 5, logfc_threshold: float = 0.25, pval_cutoff: float = 0.05,
             max_iter: int = 10, seed: int = 0) -> None:
    """Responder classification as pertpy's ``Mixscape.mixscape`` (Papalexi et al. 2021), on the
    signature of ``perturbation_signature`` (computed if ``layers['X_pert']`` is absent). Per
    knockout: DE genes of its cells vs the controls by scanpy's Wilcoxon test on ``X``
    (adjusted p < ``pval_cutoff``, |log-fold change| > ``logfc_threshold``); with fewer than
    ``min_de_genes`` every cell is non-perturbed (NP); else the cells' signatures on those genes
    are projected on the knockout's mean signature direction and classified by a two-component
    Gaussian mixture with the controls' component fixed, repeated with the direction of the
    cells called KO until the calls stop changing; fewer than ``min_de_genes`` KO cells make
    them all NP, as in pertpy. Simplified: DE genes and the mixture over all cells at once
    (pertpy repeats both within each ``split_by`` category; here ``split_by`` only picks the
    control neighbours), signatures not scaled before projection (pertpy's ``scale=True``), a
    free component that ends below the controls' calls no cell KO, and no LDA step.
    Adds obs ``mixscape_class_global`` (control, KO, NP), ``mixscape_class`` (target + KO/NP)
    and ``mixscape_class_p_ko``."""
    if MIXSCAPE_LAYER not in adata.layers:
        perturbation_signature(adata, perturbation_key, control, split_by, n_neighbors, n_pcs,
                               seed)
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    names = perturbation_names(labels, control, None)
    key = "_mixscape_de"
    with warnings.catch_warnings():  # scanpy's own frame building, as pertpy silences it
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        sc.tl.rank_genes_groups(adata, perturbation_key, groups=names, reference=control,
                                method="wilcoxon", key_added=key)
    signature = np.asarray(adata.layers[MIXSCAPE_LAYER])
    p_ko = np.zeros(len(labels))
    global_class = np.where(labels == control, control, "NP").astype(object)
    for name in names:
        de = sc.get.rank_genes_groups_df(adata, group=name, key=key)
        de = de[(de["pvals_adj"] < pval_cutoff) & (de["logfoldchanges"].abs() > logfc_threshold)]
        if len(de) < min_de_genes:
            continue
        genes = adata.var_names.get_indexer(de["names"])
        rows = np.flatnonzero(labels == name)
        probability = _mixture_responders(signature[np.ix_(rows, genes)],
                                          signature[np.ix_(labels == control, genes)],
                                          max_iter, RESPONDER_THRESHOLD)
        if np.sum(probability > RESPONDER_THRESHOLD) < min_de_genes:
            continue  # pertpy's rule: fewer KO cells than min_de_genes, all NP
        p_ko[rows] = probability
        global_class[rows[probability > RESPONDER_THRESHOLD]] = "KO"
    del adata.uns[key]
    adata.obs["mixscape_class_global"] = pd.Categorical(global_class,
                                                        categories=[control, "KO", "NP"])
    adata.obs["mixscape_class"] = np.where(labels == control, control,
                                           labels + " " + global_class.astype(str))
    adata.obs["mixscape_class_p_ko"] = p_ko


def _mixture_responders(cells: np.ndarray, controls: np.ndarray, max_iter: int,
                        threshold: float) -> np.ndarray:
    """Mixscape's loop on one perturbation's cells (rows) against the controls' (rows): each
    of its cells' posterior of responding."""
    control_mean = controls.mean(axis=0)
    responders = np.ones(len(cells), bool)
    for _ in range(max_iter):
        direction = cells[responders].mean(axis=0) - control_mean
        norm2 = direction @ direction
        if norm2 == 0:
            return np.zeros(len(cells))
        # Scaled so the controls sit near 0 and the responders near 1, as Mixscape's score.
        projection = (cells - control_mean) @ direction / norm2
        control_projection = (controls - control_mean) @ direction / norm2
        probability = fixed_component_mixture(projection, control_projection, pooled=True)
        called = probability > threshold
        if not called.any() or np.array_equal(called, responders):
            break
        responders = called
    return probability
