"""The screen's figures: UMAPs of its latents and the targets ranked by effect."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from pertflow.screen.analysis import CONDITION


def umap_figure(adata: ad.AnnData, spec: dict, seed: int):
    """UMAPs of the salient and background latents and of a PCA (rows), coloured by
    perturbation, perturbed vs control and phase (columns), as contrastiveVI's paper shows them."""
    import matplotlib.pyplot as plt

    from pertflow.benchmark.figures import latent_view

    colors = [spec["perturbation_key"], CONDITION, "phase"]
    spaces = {"salient": "X_salient", "background": "X_background", "PCA": "X_pca"}
    fig, axes = plt.subplots(len(spaces), len(colors), figsize=(4.6 * len(colors),
                                                                 4 * len(spaces)))
    for row, (title, obsm_key) in zip(axes, spaces.items()):
        view = latent_view(adata.obs[colors], adata.obsm[obsm_key], seed)
        for ax, color in zip(row, colors):
            sc.pl.umap(view, color=color, ax=ax, show=False, frameon=False, size=6,
                       title=f"{title}: {color}",
                       legend_fontsize=5 if color == spec["perturbation_key"] else 8)
    fig.tight_layout()
    return fig


def ranked_figure(table: pd.DataFrame, q: float = 0.05):
    """Every target ranked by its effect (cross-fitted salient E-distance), significant ones
    (q < ``q``) dark, a triangle over those the model-free expression statistic finds
    (q < ``q``), and its responder fraction."""
    import matplotlib.pyplot as plt

    table = table.sort_values("e_distance", ascending=False)
    fig, ax = plt.subplots(figsize=(max(5, 0.28 * len(table)), 4))
    dark = table["q_value"].to_numpy() < q
    ax.bar(np.arange(len(table)), table["e_distance"], color=np.where(dark, "0.2", "0.7"))
    ax.set_xticks(np.arange(len(table)), table["perturbation"], rotation=90, fontsize=7)
    height = table["e_distance"].to_numpy()
    found = table["expression_q_value"].to_numpy() < q
    ax.plot(np.flatnonzero(found), np.maximum(height[found], 0) + 0.03 * np.abs(height).max(),
            "v", color="tab:blue", ms=4, label=f"expression statistic q < {q}")
    ax.legend(fontsize=7, loc="upper right", frameon=False)
    ax.set_ylabel("effect: salient E-distance to controls (cross-fitted)")
    twin = ax.twinx()
    twin.plot(np.arange(len(table)), table["responder_fraction"], "o", color="tab:red", ms=3)
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("responder fraction", color="tab:red")
    ax.set_title(f"targets by effect (dark: q < {q})")
    fig.tight_layout()
    return fig
