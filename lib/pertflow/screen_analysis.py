"""The steps of a screen's analysis in the workflow (workflow/rules/screen.smk), on a ``screens:``
entry of the config: prepare the cells, train contrastiveVI on all of them, and analyse the
perturbations in its salient space (``pertflow.screen`` holds the measures).

contrastiveVI is trained with the keys of ``screen_keys``: a derived condition column
(``CONDITION``: the control label or ``PERTURBED``) splits controls from every knockout, the
perturbation column is the group (no group is held out) and the classifier's labels
(``classifier_key``), so its classifier is multi-class over all targets, controls a class.

Effects and responders are measured on cross-fitted latents: the cells are dealt into
``n_folds`` folds (obs ``FOLD``, balanced per perturbation), one model per fold trains on the
other folds and embeds its fold. A model's own training cells cannot be used: it is taught that
controls sit at salient 0 and knockouts do not, and it learns which cells are which, so every
knockout's training cells, those of knockouts without effect included, sit away from the
controls (bench/README.md). The model on all cells gives the UMAPs and the latent DEGs."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from pertflow import screen
from pertflow.keys import Keys
from pertflow.models import get_model_class
from pertflow.data.preprocess import HVG_DEFAULTS, preprocess, score_cell_cycle

log = logging.getLogger(__name__)

CONDITION = "screen_condition"
PERTURBED = "perturbed"
FOLD = "screen_fold"  # obs column: the cross-fitting fold of each cell
# contrastiveVI's params for a screen unless the entry's `params:` says otherwise: the
# classifier over all perturbation labels and the controls' salient posterior pulled to 0.
MODEL_DEFAULTS = {"classifier_weight": 1.0, "wasserstein_penalty": 1.0}
N_TOP_DEGS = 10  # latent DEGs listed per perturbation in the table
N_FOLDS = 2  # cross-fitting folds unless the entry's `n_folds:` says otherwise


def screen_keys(spec: dict) -> Keys:
    return Keys(condition=CONDITION, control=spec["control"], perturbed=PERTURBED,
                group=spec["perturbation_key"])


def prepare(raw: ad.AnnData, spec: dict, name: str, seed: int = 0) -> ad.AnnData:
    """Checked, QC-filtered, log-normalised cells with their cell-cycle phase (scored on all
    genes, before HVG selection), then the HVGs; the perturbations with ``min_cells`` cells and
    the controls only; obs ``CONDITION``. Fails on bad input (``screen.check_screen``)."""
    key, control = spec["perturbation_key"], spec["control"]
    covariates = spec.get("covariates", [])
    counts = spec.get("counts", "X")
    layer = counts["layer"] if isinstance(counts, dict) else None
    n_folds = spec.get("n_folds", N_FOLDS)
    # Each fold's model embeds at least 2 cells of every perturbation and of the controls.
    kept = screen.check_screen(raw, key, control, covariates,
                               max(spec.get("min_cells", 1), 2 * n_folds),
                               counts_layer=layer, name=name)
    adata = raw[raw.obs[key].astype(str).isin([control, *kept]).to_numpy()].copy()
    if layer is not None:
        adata.X = adata.layers[layer]
    adata.layers.clear()
    adata = preprocess(adata, qc=spec.get("qc"), hvg={"n_top_genes": None})
    score_cell_cycle(adata, seed=seed)
    hvg = {**HVG_DEFAULTS, **(spec.get("hvg") or {})}
    if hvg["n_top_genes"] and hvg["n_top_genes"] < adata.n_vars:
        if hvg["flavor"] == "seurat_v3":
            sc.pp.highly_variable_genes(adata, n_top_genes=hvg["n_top_genes"], flavor="seurat_v3",
                                        layer="counts")
        else:
            sc.pp.highly_variable_genes(adata, n_top_genes=hvg["n_top_genes"],
                                        flavor=hvg["flavor"])
        adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    adata.obs[key] = adata.obs[key].astype(str).astype("category")
    adata.obs[CONDITION] = np.where(adata.obs[key].astype(str) == control, control, PERTURBED)
    adata.obs[FOLD] = screen.fold_of(adata.obs[key], n_folds, seed)
    adata.uns.pop("qc_warnings", None)
    log.info("%s: %d cells × %d genes, %d perturbations besides '%s'", name, *adata.shape,
             adata.obs[key].nunique() - 1, control)
    return adata


def model_params(spec: dict) -> dict:
    """contrastiveVI's params for the screen: ``MODEL_DEFAULTS``, the entry's ``params``, and
    its perturbation column and covariates."""
    return {**MODEL_DEFAULTS, **(spec.get("params") or {}),
            "classifier_key": spec["perturbation_key"], "covariates": spec.get("covariates", [])}


def train(adata: ad.AnnData, spec: dict, seed: int, fold: int | None = None):
    """contrastiveVI on all cells, or on the cells outside ``fold`` (obs ``FOLD``)."""
    cls = get_model_class("contrastivevi")
    if fold is not None:
        adata = adata[adata.obs[FOLD].to_numpy() != fold].copy()
    return cls(screen_keys(spec)).fit(adata, model_params(spec), seed=seed)


def cross_fitted_salient(adata: ad.AnnData, fold_models: list) -> np.ndarray:
    """Each cell's salient posterior mean from the model of its fold (``fold_models[k]`` did not
    train on fold k): comparable within a fold only."""
    fold = adata.obs[FOLD].to_numpy()
    if len(fold_models) != len(np.unique(fold)):
        raise ValueError(f"{len(fold_models)} fold models for {len(np.unique(fold))} folds")
    parts = [model.embed(adata[fold == k])["X_salient"] for k, model in enumerate(fold_models)]
    salient = np.zeros((adata.n_obs, parts[0].shape[1]), parts[0].dtype)
    for k, part in enumerate(parts):
        salient[fold == k] = part
    return salient


def analyse(adata: ad.AnnData, model, fold_models: list, spec: dict, seed: int = 0,
            n_permutations: int = 1000,
            n_samples: int = 20) -> tuple[ad.AnnData, pd.DataFrame, pd.DataFrame]:
    """The cells with their latents (obsm ``X_salient``, ``X_background`` from ``model``,
    ``X_salient_cross_fitted`` from ``fold_models``, ``X_pca``) and calls (obs ``responder``,
    ``mixscape_class_global``), the per-perturbation table (effect: cross-fitted salient
    E-distance with permutation p and BH q; the model-free expression statistic with its own;
    responder fraction, the Mixscape-like baseline's, top latent DEGs) and the latent DE
    table."""
    key, control = spec["perturbation_key"], spec["control"]
    labels = adata.obs[key].astype(str).to_numpy()
    fold = adata.obs[FOLD].to_numpy()
    adata = adata.copy()
    adata.obsm.update(model.embed(adata))
    held_out = adata.obsm["X_salient_cross_fitted"] = cross_fitted_salient(adata, fold_models)
    effects = screen.effect_sizes(held_out, labels, control, n_permutations=n_permutations,
                                  seed=seed, folds=fold)
    expression = screen.expression_effects(adata.X, labels, control,
                                           n_permutations=n_permutations, seed=seed)
    significant = effects.index[effects["q_value"] < 0.05]
    calls = screen.call_responders(held_out, labels, control, significant=significant,
                                   folds=fold)
    adata.obs["responder"] = calls["responder"].to_numpy()
    adata.obs["responder_probability"] = calls["probability"].to_numpy()
    screen.mixscape(adata, key, control,
                    split_by=screen.mixscape_split_by(spec.get("covariates") or []), seed=seed)
    adata.layers.pop(screen.MIXSCAPE_LAYER, None)

    samples = model.sample_latents(adata, n_samples=n_samples, seed=seed)
    de = screen.latent_de(lambda z, t, rows: model.decode(z, t, adata[rows]),
                          samples["background"], samples["salient"], labels, control,
                          adata.var_names, use=adata.obs["responder"].to_numpy(), seed=seed)

    table = effects.copy()
    table.index.name = "perturbation"
    cells = pd.DataFrame({"perturbation": labels, "responder": adata.obs["responder"],
                          "ko": adata.obs["mixscape_class_global"].astype(str) == "KO"})
    fractions = cells[cells["perturbation"] != control].groupby("perturbation")[
        ["responder", "ko"]].mean()
    table = table.join(expression[["t2", "p_value", "q_value"]].add_prefix("expression_"))
    table["responder_fraction"] = fractions["responder"]
    table["mixscape_responder_fraction"] = fractions["ko"]
    top = de[de["rank"] <= N_TOP_DEGS].groupby("perturbation")["gene"].agg(", ".join)
    table["top_latent_degs"] = top
    if "X_pca" not in adata.obsm:
        sc.pp.pca(adata, random_state=seed)
    return adata, table.reset_index(), de


def umap_figure(adata: ad.AnnData, spec: dict, seed: int = 0):
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

