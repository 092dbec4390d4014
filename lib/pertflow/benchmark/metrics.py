"""Scores of a predicted perturbed population against the real one, each a small pure function;
and the agreement of a latent space's clusters with known labels (``leiden_ari``)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import stats
from scipy.spatial.distance import cdist, pdist
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from pertflow.utils import dense

# Every metric column of the tidy table, in display order, with the direction that is better.
# The "_top100" names are fixed column names: the number of DEGs they use is the config value
# `n_top_degs` (100 by default), so tables and figures keep one schema whatever it is set to.
METRICS: dict[str, str] = {
    "r2_mean_all": "higher",
    "r2_mean_top100": "higher",
    "r2_var_all": "higher",
    "r2_var_top100": "higher",
    "pearson_delta": "higher",
    "pearson_delta_perturbed": "higher",
    "e_distance": "lower",
    "mmd": "lower",
    "deg_overlap_top100": "higher",
    "direction_accuracy_top100": "higher",
}
# Cells per side for the distance metrics and the PCA they use: pairwise distances grow with the
# square of the cell count.
MAX_DISTANCE_CELLS = 2000
N_PCA_COMPS = 50


def top_degs(truth: ad.AnnData, control: ad.AnnData, n: int = 100) -> pd.DataFrame:
    """Genes ranked by a Wilcoxon test of truth (perturbed) vs control cells, top ``n``."""
    both = ad.concat({"perturbed": truth, "control": control}, label="_side", index_unique="-")
    both.X = dense(both.X)
    sc.tl.rank_genes_groups(both, "_side", groups=["perturbed"], reference="control",
                            method="wilcoxon", n_genes=min(n, both.n_vars))
    return sc.get.rank_genes_groups_df(both, group="perturbed").head(n).reset_index(drop=True)


def read_degs(path: str) -> list[str]:
    """The ranked DEG names of a split's ``degs.csv`` (written from ``top_degs``)."""
    return pd.read_csv(path)["names"].astype(str).tolist()


def r2_of(x: np.ndarray, y: np.ndarray) -> float:
    """scGen's R²: squared Pearson correlation from a least-squares line through (x, y)."""
    return float(stats.linregress(x, y).rvalue ** 2)


def r2_mean(pred: np.ndarray, truth: np.ndarray) -> float:
    """R² of per-gene means, predicted vs real (cells × genes arrays)."""
    return r2_of(pred.mean(axis=0), truth.mean(axis=0))


def r2_var(pred: np.ndarray, truth: np.ndarray) -> float:
    """R² of per-gene variances, predicted vs real."""
    return r2_of(pred.var(axis=0), truth.var(axis=0))


def pearson_delta(pred: np.ndarray, truth: np.ndarray, reference: np.ndarray) -> float:
    """Pearson correlation of predicted vs real change, both relative to ``reference`` gene means.

    With the held-out control mean as reference this is the usual Pearson-delta; with the mean of
    all perturbed training cells it is Systema's variant (Viñas Torné et al., Nat. Biotechnol.
    2025), which no longer rewards a prediction for reproducing the shift shared by every
    perturbed cell. When the perturbed reference cells are of other groups than the held-out one,
    the change relative to it also carries the difference between groups, which a prediction of
    no change reproduces.

    NaN when either change is constant: the `control` model predicts no change relative to the
    held-out controls, so its Pearson-delta is undefined; scipy's warning about the constant input
    is silenced here, where the NaN is expected (the summaries skip NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = stats.pearsonr(pred.mean(axis=0) - reference, truth.mean(axis=0) - reference)
    return float(result[0])


def subsample(X: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` rows of ``X``, drawn without replacement."""
    return X if len(X) <= n else X[np.sort(rng.choice(len(X), size=n, replace=False))]


def pca_projection(fit_on: np.ndarray, n_comps: int, seed: int) -> PCA:
    """PCA (centred, unscaled, as scanpy's ``pp.pca``) fitted on ``fit_on`` cells by seeded
    randomized SVD in single precision, much faster than an exact solver on thousands of cells ×
    genes with distances that agree closely with an exact SVD's."""
    n_comps = min(n_comps, fit_on.shape[0] - 1, fit_on.shape[1] - 1)
    return PCA(n_components=n_comps, svd_solver="randomized",
               random_state=seed).fit(fit_on.astype(np.float32))


def e_distance(X: np.ndarray, Y: np.ndarray) -> float:
    """Energy distance as pertpy's ``Edistance`` (``pertpy/tools/_distances/_distances.py``,
    scverse/pertpy; Peidli et al. 2024, scPerturb): 2·mean‖x−y‖ − mean‖x−x'‖ − mean‖y−y'‖ with
    Euclidean distances, each mean over all pairs including a cell with itself. (Some older
    pertpy releases used squared Euclidean distances instead.)"""
    return float(2 * cdist(X, Y).mean() - cdist(X, X).mean() - cdist(Y, Y).mean())


def median_bandwidth(X: np.ndarray, Y: np.ndarray) -> float:
    """The median heuristic: the median Euclidean distance between distinct cells of X and Y
    pooled."""
    return float(np.median(pdist(np.vstack([X, Y]))))


def mmd(X: np.ndarray, Y: np.ndarray, bandwidth: float) -> float:
    """Squared maximum mean discrepancy with the RBF kernel
    k(a, b) = exp(−‖a−b‖² / (2·bandwidth²)): mean k(X, X) + mean k(Y, Y) − 2·mean k(X, Y), each
    mean over all pairs (the biased V-statistic, as pertpy's ``MMD``)."""
    def kernel_mean(A, B):
        return np.exp(-cdist(A, B, "sqeuclidean") / (2 * bandwidth**2)).mean()

    return float(kernel_mean(X, X) + kernel_mean(Y, Y) - 2 * kernel_mean(X, Y))


def deg_overlap(predicted_degs: list[str], real_degs: list[str]) -> float:
    """Fraction of the real top DEGs that are also among the DEGs called on the prediction."""
    return len(set(predicted_degs) & set(real_degs)) / len(real_degs)


def direction_accuracy(pred: np.ndarray, truth: np.ndarray, control: np.ndarray) -> float:
    """Fraction of genes (columns) whose predicted mean change from control has the sign of the
    real one; a predicted change of exactly zero counts as wrong where the real change is not zero."""
    reference = control.mean(axis=0)
    return float(np.mean(np.sign(pred.mean(axis=0) - reference)
                         == np.sign(truth.mean(axis=0) - reference)))


def score(pred: ad.AnnData, truth: ad.AnnData, control: ad.AnnData, degs: list[str],
          perturbed_reference: np.ndarray, seed: int,
          max_cells: int = MAX_DISTANCE_CELLS) -> dict:
    """Every metric of one prediction; genes are aligned on ``truth.var_names``.

    ``degs`` are the real top DEGs (truth vs control); ``perturbed_reference`` the per-gene mean
    of the perturbed training cells, in truth's gene order (``pertflow.data.io.perturbed_mean``).
    The distance metrics use at most ``max_cells`` cells per population, drawn with ``seed``, in a
    PCA of truth and control."""
    genes = truth.var_names
    P, T, C = (dense(a[:, genes].X).astype(np.float64) for a in (pred, truth, control))
    top = genes.get_indexer(degs)
    rng = np.random.default_rng(seed)
    P_sub, T_sub, C_sub = (subsample(X, max_cells, rng) for X in (P, T, C))
    pca = pca_projection(np.vstack([T_sub, C_sub]), N_PCA_COMPS, seed)
    P_pcs, T_pcs = pca.transform(P_sub), pca.transform(T_sub)
    predicted_degs = top_degs(ad.AnnData(P, var=pd.DataFrame(index=genes)),
                              ad.AnnData(C, var=pd.DataFrame(index=genes)), n=len(degs))
    # Only genes the prediction moves up count as called: a prediction that changes nothing has
    # all scores tied at zero, and its "top" genes would merely be the first in gene order.
    predicted_degs = predicted_degs[predicted_degs["scores"] > 0]
    return {
        "r2_mean_all": r2_mean(P, T),
        "r2_mean_top100": r2_mean(P[:, top], T[:, top]),
        "r2_var_all": r2_var(P, T),
        "r2_var_top100": r2_var(P[:, top], T[:, top]),
        "pearson_delta": pearson_delta(P, T, C.mean(axis=0)),
        "pearson_delta_perturbed": pearson_delta(P, T, perturbed_reference),
        "e_distance": e_distance(P_pcs, T_pcs),
        "mmd": mmd(P_pcs, T_pcs, median_bandwidth(P_pcs, T_pcs)),
        "deg_overlap_top100": deg_overlap(predicted_degs["names"].astype(str).tolist(), degs),
        "direction_accuracy_top100": direction_accuracy(P[:, top], T[:, top], C[:, top]),
        "n_pred": int(P.shape[0]),
        "n_truth": int(T.shape[0]),
    }


def leiden_ari(view: ad.AnnData, labels: str, seed: int, resolution: float = 0.5) -> float:
    """Leiden clusters of ``view``'s neighbour graph into ``obs['leiden']``, and their adjusted
    Rand index against the known ``obs[labels]`` (1: the same partition, ~0: chance)."""
    sc.tl.leiden(view, resolution=resolution, random_state=seed, flavor="igraph",
                 n_iterations=2, directed=False)
    return float(adjusted_rand_score(view.obs[labels], view.obs["leiden"]))
