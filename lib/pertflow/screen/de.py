"""Differential expression per perturbation: decoded from a model's latents (latent DE), and
scanpy's Wilcoxon test on the expression, both as ranked gene tables."""

from __future__ import annotations

import warnings
from typing import Callable, Iterable

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from pertflow.screen.selection import at_most, perturbation_names


# decode(background, salient, rows) -> expected expression, cells × genes, on X's log1p scale;
# rows index the real cells whose latents are decoded, for a decoder conditioned on their
# covariates (batch); a decoder without covariates may ignore it.
Decoder = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def latent_de(decode: Decoder, background: np.ndarray, salient: np.ndarray, labels,
              control: str, genes, perturbations: Iterable[str] | None = None,
              use: np.ndarray | None = None, max_cells: int = 200, interval: float = 0.9,
              seed: int = 0) -> pd.DataFrame:
    """Genes ranked per perturbation by the change of decoded expression when its salient latent
    is set to its cells' mean instead of 0, each cell keeping its own background.

    ``background`` and ``salient`` are posterior samples of the real cells' latents, shaped
    samples × cells × dims (a single cells × dims array is one sample). For each sample s and
    perturbation, up to ``max_cells`` of its cells (those with ``use`` True, e.g. responders,
    if given) are decoded twice, with salient = the mean of their sampled salient latents and
    with salient = 0; the change of a gene is the mean difference over the cells. The score is
    the change's mean over samples, the interval its central ``interval`` quantiles. Columns:
    perturbation, gene, score, lower, upper, rank (1 = largest |score|)."""
    background, salient = _samples(background), _samples(salient)
    if background.shape[:2] != salient.shape[:2]:
        raise ValueError(f"background {background.shape} and salient {salient.shape} samples "
                         "must have the same numbers of samples and cells")
    labels = np.asarray(labels).astype(str)
    genes = np.asarray(genes).astype(str)
    rng = np.random.default_rng(seed)
    use = np.ones(len(labels), bool) if use is None else np.asarray(use, bool)
    tables = []
    for name in perturbation_names(labels, control, perturbations):
        rows = np.flatnonzero((labels == name) & use)
        if len(rows) == 0:
            rows = np.flatnonzero(labels == name)  # no responders: all its cells
        rows = at_most(rows, max_cells, rng)
        changes = np.empty((len(background), len(genes)))
        for s in range(len(background)):
            z, t = background[s, rows], salient[s, rows]
            shifted = np.broadcast_to(t.mean(axis=0), t.shape)
            changes[s] = (np.asarray(decode(z, shifted, rows))
                          - np.asarray(decode(z, np.zeros_like(t), rows))).mean(axis=0)
        lower, upper = np.quantile(changes, [(1 - interval) / 2, (1 + interval) / 2], axis=0)
        tables.append(_ranked(name, genes, changes.mean(axis=0),
                              {"lower": lower, "upper": upper}))
    return pd.concat(tables, ignore_index=True)


def _samples(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[None] if x.ndim == 2 else x


def wilcoxon_de(adata: ad.AnnData, perturbation_key: str, control: str,
                perturbations: Iterable[str] | None = None,
                use: np.ndarray | None = None) -> pd.DataFrame:
    """scanpy's Wilcoxon test (``rank_genes_groups``) of each perturbation's cells vs the
    controls on log-normalised ``X``; ``use`` restricts the perturbed cells (e.g. to the cells
    ``latent_de`` used). Columns as ``latent_de``'s: perturbation, gene, score (the test
    statistic), logfoldchange, pval_adj, rank (1 = largest |score|)."""
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    names = perturbation_names(labels, control, perturbations)
    keep = (labels == control) | (np.isin(labels, names)
                                  & (True if use is None else np.asarray(use, bool)))
    cells = adata[keep].copy()
    cells.obs["_group"] = pd.Categorical(labels[keep])
    present = [x for x in names if np.any(labels[keep] == x)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        sc.tl.rank_genes_groups(cells, "_group", groups=present, reference=control,
                                method="wilcoxon", n_genes=cells.n_vars)
    tables = []
    for name in present:
        df = sc.get.rank_genes_groups_df(cells, group=name)
        tables.append(_ranked(name, df["names"].astype(str).to_numpy(), df["scores"].to_numpy(),
                              {"logfoldchange": df["logfoldchanges"].to_numpy(),
                               "pval_adj": df["pvals_adj"].to_numpy()}))
    return pd.concat(tables, ignore_index=True)


def _ranked(name: str, genes: np.ndarray, score: np.ndarray, extra: dict) -> pd.DataFrame:
    order = np.argsort(-np.abs(score), kind="stable")
    table = pd.DataFrame({"perturbation": name, "gene": genes[order], "score": score[order],
                          **{k: np.asarray(v)[order] for k, v in extra.items()}})
    table["rank"] = np.arange(1, len(table) + 1)
    return table
