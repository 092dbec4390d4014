"""The steps of a screen's analysis in the workflow (workflow/rules/screen.smk), on a validated
``screens:`` entry of the config (the schema fills every default): prepare the cells, train
contrastiveVI, and analyse the perturbations in its salient space.

contrastiveVI is trained with the keys of ``screen_keys``: a derived condition column
(``CONDITION``: the control label or ``PERTURBED``) splits controls from every knockout, the
perturbation column is the group (no group is held out) and the classifier's labels
(``classifier_key``), so its classifier is multi-class over all targets, controls a class.

Effects and responders are measured on cross-fitted latents: the cells are dealt into
``n_folds`` folds (obs ``FOLD``, balanced per perturbation), one model per fold trains on the
other folds and embeds its fold. A model's own training cells cannot be used: it is taught that
controls sit at salient 0 and knockouts do not, and it learns which cells are which, so every
knockout's training cells, those of knockouts without effect included, sit away from the
controls. The model on all cells gives the UMAPs and the latent DEGs."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from pertflow.data.preprocess import preprocess, score_cell_cycle
from pertflow.keys import Keys
from pertflow.models import get_model_class
from pertflow.screen.checks import check_screen
from pertflow.screen.de import latent_de
from pertflow.screen.effects import effect_sizes, expression_effects
from pertflow.screen.mixscape import MIXSCAPE_LAYER, mixscape, mixscape_split_by
from pertflow.screen.responders import call_responders

log = logging.getLogger(__name__)

MODEL = "contrastivevi"
CONDITION = "screen_condition"
PERTURBED = "perturbed"
FOLD = "screen_fold"  # obs column: the cross-fitting fold of each cell
N_TOP_DEGS = 10  # latent DEGs listed per perturbation in the table


def screen_keys(spec: dict) -> Keys:
    return Keys(condition=CONDITION, control=spec["control"], perturbed=PERTURBED,
                group=spec["perturbation_key"])


def fold_of(labels, n_folds: int, seed: int = 0) -> np.ndarray:
    """Each cell's fold, 0 to ``n_folds`` − 1, dealt round-robin within each label after a seeded
    shuffle, so every label's cells split as evenly as they can."""
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), int)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold[rows] = np.arange(len(rows)) % n_folds
    return fold


def prepare(raw: ad.AnnData, spec: dict, name: str, seed: int) -> ad.AnnData:
    """Checked, QC-filtered, log-normalised cells with their cell-cycle phase (scored on all
    genes, before HVG selection), then the HVGs; the perturbations with ``min_cells`` cells and
    the controls only; obs ``CONDITION`` and ``FOLD``. Fails on bad input (``check_screen``)."""
    key, control, n_folds = spec["perturbation_key"], spec["control"], spec["n_folds"]
    layer = spec["counts"]["layer"] if isinstance(spec["counts"], dict) else None
    # Each fold's model embeds at least 2 cells of every perturbation and of the controls.
    kept = check_screen(raw, key, control, spec["covariates"],
                        max(spec["min_cells"], 2 * n_folds), counts_layer=layer, name=name)
    adata = raw[raw.obs[key].astype(str).isin([control, *kept]).to_numpy()].copy()
    if layer is not None:
        adata.X = adata.layers[layer]
    adata.layers.clear()
    adata = preprocess(adata, qc=spec["qc"], hvg={"n_top_genes": None})
    score_cell_cycle(adata, seed=seed)
    hvg = spec["hvg"]
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
    adata.obs[FOLD] = fold_of(adata.obs[key], n_folds, seed)
    adata.uns.pop("qc_warnings", None)
    log.info("%s: %d cells × %d genes, %d perturbations besides '%s'", name, *adata.shape,
             adata.obs[key].nunique() - 1, control)
    return adata


def params_from_screen(spec: dict) -> dict:
    """The contrastiveVI params a screen sets from its own keys, not from its ``params``."""
    return {"classifier_key": spec["perturbation_key"], "covariates": spec["covariates"]}


def model_params(spec: dict) -> dict:
    """contrastiveVI's params for the screen: the entry's ``params`` and
    ``params_from_screen``."""
    return {**spec["params"], **params_from_screen(spec)}


def train(adata: ad.AnnData, spec: dict, seed: int, fold: int | None = None):
    """contrastiveVI on all cells, or on the cells outside ``fold`` (obs ``FOLD``)."""
    if fold is not None:
        adata = adata[adata.obs[FOLD].to_numpy() != fold].copy()
    return get_model_class(MODEL)(screen_keys(spec)).fit(adata, model_params(spec), seed=seed)


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


def analyse(adata: ad.AnnData, model, fold_models: list, spec: dict, seed: int,
            n_permutations: int,
            n_samples: int) -> tuple[ad.AnnData, pd.DataFrame, pd.DataFrame]:
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
    effects = effect_sizes(held_out, labels, control, n_permutations=n_permutations, seed=seed,
                           folds=fold)
    expression = expression_effects(adata.X, labels, control, n_permutations=n_permutations,
                                    seed=seed)
    significant = effects.index[effects["q_value"] < 0.05]
    calls = call_responders(held_out, labels, control, significant=significant, folds=fold)
    adata.obs["responder"] = calls["responder"].to_numpy()
    adata.obs["responder_probability"] = calls["probability"].to_numpy()
    # Also adds obsm X_pca (the PCA its control neighbours are found in), which the UMAPs use.
    mixscape(adata, key, control, split_by=mixscape_split_by(spec["covariates"]), seed=seed)
    adata.layers.pop(MIXSCAPE_LAYER, None)

    samples = model.sample_latents(adata, n_samples=n_samples, seed=seed)
    de = latent_de(lambda z, t, rows: model.decode(z, t, adata[rows]),
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
    return adata, table.reset_index(), de
