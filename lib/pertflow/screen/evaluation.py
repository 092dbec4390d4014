"""Scores of the screen's analyses against a simulation's truth
(``pertflow.simulate.screen.truth_table`` and ``truth_genes``)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from pertflow.screen.selection import at_most


def effect_auroc(effects: pd.Series, acting: pd.Series) -> float:
    """AUROC of ranking perturbations by ``effects`` (e.g. ``effect_sizes(...)['e_distance']``)
    for acting vs non-acting (``truth_table(adata)['acting']``), on the perturbations in both."""
    both = effects.index.intersection(acting.index)
    truth = acting.loc[both].astype(bool).to_numpy()
    if truth.all() or not truth.any():
        raise ValueError("effect_auroc needs acting and non-acting perturbations")
    return float(roc_auc_score(truth, effects.loc[both].to_numpy()))


def responder_scores(responder, escaped, labels, acting: Iterable[str]) -> dict[str, float]:
    """Responder calls against the truth, on the cells of acting knockouts (a null knockout's
    cells have no response to find): precision and recall of the escaper calls (cells not called
    responders) and of the responder calls, and accuracy."""
    labels = np.asarray(labels).astype(str)
    cells = np.isin(labels, list(acting))
    called = ~np.asarray(responder, bool)[cells]
    true = np.asarray(escaped, bool)[cells]

    def ratio(a, b):
        return float(a.sum() / b.sum()) if b.sum() else float("nan")

    return {"escaper_precision": ratio(called & true, called),
            "escaper_recall": ratio(called & true, true),
            "responder_precision": ratio(~called & ~true, ~called),
            "responder_recall": ratio(~called & ~true, ~true),
            "accuracy": float(np.mean(called == true))}


def knn_accuracy(latent: np.ndarray, labels, k: int = 15, n_folds: int = 5,
                 max_cells: int = 3000, seed: int = 0) -> dict[str, float]:
    """Cross-validated accuracy of a k-nearest-neighbour classifier predicting ``labels`` from
    ``latent``, beside chance (the most frequent label's share), on at most ``max_cells``
    cells."""
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    rows = at_most(np.arange(len(labels)), max_cells, rng)
    folds = KFold(n_folds, shuffle=True, random_state=seed)
    scores = cross_val_score(KNeighborsClassifier(k), np.asarray(latent)[rows], labels[rows],
                             cv=folds)
    chance = pd.Series(labels[rows]).value_counts(normalize=True).iloc[0]
    return {"accuracy": float(scores.mean()), "chance": float(chance)}


def precision_at_k(de: pd.DataFrame, true_genes: dict[str, list[str]],
                   k: int = 20) -> pd.Series:
    """Per perturbation with true genes, the fraction of its top ``k`` ranked genes in ``de``
    (``latent_de`` or ``wilcoxon_de``) that are among them."""
    out = {}
    for name, genes in true_genes.items():
        top = de.loc[(de["perturbation"] == name) & (de["rank"] <= k), "gene"]
        if len(top):
            out[name] = float(np.isin(top, genes).sum() / k)
    return pd.Series(out, name=f"precision_at_{k}", dtype=float)
