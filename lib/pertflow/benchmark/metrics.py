"""Scores of a predicted perturbed population against the real one, each a small pure function;
the data's own ceiling of every score (``ceiling``: two disjoint random halves of the real
perturbed cells scored against each other) and each score calibrated between the `control`
prediction (0) and that ceiling (1); the discrimination across held-out groups
(``discrimination``); and the agreement of a latent space's clusters with known labels
(``leiden_ari``)."""

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
    "e_distance_unbiased": "lower",
    "mmd": "lower",
    "deg_overlap_top100": "higher",
    "direction_accuracy_top100": "higher",
    "r2_delta_deg_weighted": "higher",
    "discrimination": "higher",
}
# Metrics of a prediction against the other held-out groups too, computed where every split of a
# model is together (``pertflow.benchmark.summary.metrics_table``), not by ``score``.
ACROSS_GROUPS = ("discrimination",)
RUN_METRICS = [m for m in METRICS if m not in ACROSS_GROUPS]
# The metrics the verdict judges: every one but `e_distance`, the V-statistic (kept in the tables
# for comparison with pertpy), whose expectation grows with spread / cells; the verdict's
# E-distance is `e_distance_unbiased`.
VERDICT_METRICS = [m for m in METRICS if m != "e_distance"]
# Draws of two random halves of the real perturbed cells that the ceiling averages.
CEILING_DRAWS = 3


def ceiling_column(metric: str) -> str:
    """The column of a metric's ceiling (its value between two halves of the real cells)."""
    return f"{metric}_ceiling"


def calibrated_column(metric: str) -> str:
    """The column of a metric's calibrated score (0: `control`, 1: the ceiling)."""
    return f"{metric}_calibrated"


CEILING_COLUMNS = [ceiling_column(m) for m in METRICS]
CALIBRATED_COLUMNS = [calibrated_column(m) for m in METRICS]
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


def read_deg_weights(path: str) -> np.ndarray:
    """The weights of a split's DEGs (``degs.csv``), in its order: ``deg_weights`` of the
    Wilcoxon scores."""
    table = pd.read_csv(path)
    if "scores" not in table.columns:
        raise ValueError(f"{path} has no `scores` column; delete it so that the split's DEGs are "
                         "called again.")
    return deg_weights(table["scores"].to_numpy(float))


def deg_weights(scores: np.ndarray) -> np.ndarray:
    """Weights of the DEGs from their Wilcoxon scores (truth vs control): the positive part of
    each score, summing to 1; equal weights where no score is positive."""
    weights = np.clip(np.nan_to_num(np.asarray(scores, float)), 0, None)
    return weights / weights.sum() if weights.sum() > 0 else np.full(len(weights),
                                                                      1 / max(len(weights), 1))


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
        warnings.simplefilter("ignore", stats.NearConstantInputWarning)
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


def e_distance_unbiased(X: np.ndarray, Y: np.ndarray) -> float:
    """Energy distance as the U-statistic: 2·mean‖x−y‖ − mean‖x−x'‖ − mean‖y−y'‖ with the
    within-sample means over distinct pairs only (no cell paired with itself). Its expectation is
    0 for two samples of one distribution whatever their sizes, equal or not (Székely & Rizzo
    2013), where ``e_distance``'s grows with the spread over the cell counts. NaN with fewer than
    two cells on a side."""
    if len(X) < 2 or len(Y) < 2:
        return np.nan
    return float(2 * cdist(X, Y).mean() - pdist(X).mean() - pdist(Y).mean())


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


def r2_delta_weighted(pred: np.ndarray, truth: np.ndarray, control: np.ndarray,
                      weights: np.ndarray) -> float:
    """Weighted coefficient of determination of the predicted change of the per-gene means
    (Δ = mean − control mean) against the real change, over the columns given (the real DEGs),
    each gene weighted by ``weights`` (``deg_weights``): 1 − Σw(Δp − Δt)² / Σw(Δt − Δ̄t)², with
    Δ̄t the weighted mean real change. 1: every weighted change right; 0: no better than the
    mean real change everywhere; negative: worse (the `control` prediction, Δp = 0, is
    negative unless the changes are centred on 0). NaN where the real change is constant."""
    w = np.asarray(weights, float) / np.sum(weights)
    reference = control.mean(axis=0)
    real, predicted = truth.mean(axis=0) - reference, pred.mean(axis=0) - reference
    total = float(np.sum(w * (real - np.sum(w * real)) ** 2))
    if total <= 0:
        return np.nan
    return float(1 - np.sum(w * (predicted - real) ** 2) / total)


def called_degs(pred: np.ndarray, control: np.ndarray, genes: pd.Index, n: int) -> list[str]:
    """The DEGs called on a prediction against the held-out control, as the real ones are
    (``top_degs``), keeping only genes the prediction moves up: a prediction that changes nothing
    has all scores tied at zero, and its "top" genes would merely be the first in gene order."""
    var = pd.DataFrame(index=genes)
    called = top_degs(ad.AnnData(pred, var=var), ad.AnnData(control, var=var), n=n)
    return called.loc[called["scores"] > 0, "names"].astype(str).tolist()


def expression_scores(P: np.ndarray, T: np.ndarray, C: np.ndarray, top: np.ndarray,
                      degs: list[str], weights: np.ndarray, perturbed_reference: np.ndarray,
                      predicted_degs: list[str]) -> dict:
    """The metrics of per-gene statistics (not distances) of prediction ``P`` against truth
    ``T`` (cells × genes, aligned), ``top`` the column indices of the real DEGs ``degs``."""
    return {
        "r2_mean_all": r2_mean(P, T),
        "r2_mean_top100": r2_mean(P[:, top], T[:, top]),
        "r2_var_all": r2_var(P, T),
        "r2_var_top100": r2_var(P[:, top], T[:, top]),
        "pearson_delta": pearson_delta(P, T, C.mean(axis=0)),
        "pearson_delta_perturbed": pearson_delta(P, T, perturbed_reference),
        "deg_overlap_top100": deg_overlap(predicted_degs, degs),
        "direction_accuracy_top100": direction_accuracy(P[:, top], T[:, top], C[:, top]),
        "r2_delta_deg_weighted": r2_delta_weighted(P[:, top], T[:, top], C[:, top], weights),
    }


def distance_scores(P_pcs: np.ndarray, T_pcs: np.ndarray) -> dict:
    """The distance metrics of two populations in a PCA."""
    return {"e_distance": e_distance(P_pcs, T_pcs),
            "e_distance_unbiased": e_distance_unbiased(P_pcs, T_pcs),
            "mmd": mmd(P_pcs, T_pcs, median_bandwidth(P_pcs, T_pcs))}


def score(pred: ad.AnnData, truth: ad.AnnData, control: ad.AnnData, degs: list[str],
          perturbed_reference: np.ndarray, seed: int,
          max_cells: int = MAX_DISTANCE_CELLS, deg_weights_: np.ndarray | None = None) -> dict:
    """Every per-run metric (``RUN_METRICS``) of one prediction; genes are aligned on
    ``truth.var_names``.

    ``degs`` are the real top DEGs (truth vs control), ``deg_weights_`` their weights
    (``deg_weights``; equal by default); ``perturbed_reference`` the per-gene mean of the
    perturbed training cells, in truth's gene order (``pertflow.data.io.perturbed_mean``).
    The distance metrics use at most ``max_cells`` cells per population, drawn with ``seed``, in a
    PCA of truth and control."""
    genes = truth.var_names
    P, T, C = (dense(a[:, genes].X).astype(np.float64) for a in (pred, truth, control))
    top = genes.get_indexer(degs)
    weights = np.full(len(degs), 1 / len(degs)) if deg_weights_ is None else deg_weights_
    rng = np.random.default_rng(seed)
    P_sub, T_sub, C_sub = (subsample(X, max_cells, rng) for X in (P, T, C))
    pca = pca_projection(np.vstack([T_sub, C_sub]), N_PCA_COMPS, seed)
    result = {**expression_scores(P, T, C, top, degs, weights, perturbed_reference,
                                  called_degs(P, C, genes, len(degs))),
              **distance_scores(pca.transform(P_sub), pca.transform(T_sub))}
    return {**{m: result[m] for m in RUN_METRICS}, "n_pred": int(P.shape[0]),
            "n_truth": int(T.shape[0])}


def calibrate(value: float, control: float, ceiling: float, better: str) -> float:
    """``value`` on the scale from ``control`` (0) to ``ceiling`` (1); NaN where the ceiling is
    not better than the control in the metric's direction (nothing to calibrate against) or any
    of them is NaN."""
    span = ceiling - control
    if not np.isfinite(span) or not np.isfinite(value) or (span <= 0 if better == "higher"
                                                           else span >= 0):
        return np.nan
    return float((value - control) / span)


def no_ceiling() -> dict:
    """The ceiling and calibrated columns of a run without a ceiling: NaN."""
    return dict.fromkeys([*CEILING_COLUMNS, *CALIBRATED_COLUMNS], np.nan)


def ceiling(pred: ad.AnnData, truth: ad.AnnData, control: ad.AnnData,
            perturbed_reference: np.ndarray, n_degs: int, seed: int, min_cells: int,
            draws: int = CEILING_DRAWS, max_cells: int = MAX_DISTANCE_CELLS
            ) -> tuple[dict, dict, str | None]:
    """The data's own ceiling of every per-run metric, and the prediction's score calibrated
    between the `control` prediction (0) and that ceiling (1).

    Each of ``draws`` seeded draws splits the real perturbed cells into two disjoint random
    halves A and B. Everything truth-side comes from B alone: its DEGs (``n_degs``, Wilcoxon
    against the held-out control, with their weights), its cells. The prediction, the `control`
    prediction (the held-out control cells: no change, no DEG called, Pearson-delta 0, no
    correlation, where it is undefined; so for any prediction of no change) and half A are each scored against B, in one PCA
    of the whole truth and the control; the three scores are averaged over the draws. So the
    models, the anchor and the ceiling face the same cells, and half A, a sample of the truth's
    own distribution of half its size, scores 1 on average.

    Returns the ``{metric}_ceiling`` and ``{metric}_calibrated`` columns (``ACROSS_GROUPS``
    metrics left out: ``metrics_table`` adds them), the centroid changes that the discrimination
    needs (``prediction`` and ``truth``: mean minus control mean over every cell; ``half_a`` and
    ``half_b``: of the first draw's halves, None without a ceiling), and the reason there is no
    ceiling (None where there is one): fewer than ``2 * min_cells`` perturbed cells."""
    genes = truth.var_names
    P, T, C = (dense(a[:, genes].X).astype(np.float64) for a in (pred, truth, control))
    reference = C.mean(axis=0)
    centroids = {"prediction": P.mean(axis=0) - reference, "truth": T.mean(axis=0) - reference,
                 "half_a": None, "half_b": None}
    columns = {c: v for c, v in no_ceiling().items()
               if c.removesuffix("_ceiling").removesuffix("_calibrated") not in ACROSS_GROUPS}
    if len(T) < 2 * min_cells:
        return columns, centroids, (f"{len(T)} perturbed cells, fewer than 2 × min_cells "
                                    f"({2 * min_cells}): no ceiling and no calibrated scores")
    rng = np.random.default_rng([seed, 2])
    pca = pca_projection(np.vstack([subsample(T, max_cells, rng), subsample(C, max_cells, rng)]),
                         N_PCA_COMPS, seed)
    P_pcs, C_pcs = (pca.transform(subsample(X, max_cells, rng)) for X in (P, C))
    n_degs = min(n_degs, len(genes))
    predicted_degs = called_degs(P, C, genes, n_degs)
    scores = {"model": [], "control": [], "ceiling": []}
    for draw in range(draws):
        order = rng.permutation(len(T))
        A, B = T[np.sort(order[: len(T) // 2])], T[np.sort(order[len(T) // 2:])]
        if draw == 0:
            centroids |= {"half_a": A.mean(axis=0) - reference, "half_b": B.mean(axis=0) - reference}
        real = top_degs(ad.AnnData(B, var=pd.DataFrame(index=genes)),
                        ad.AnnData(C, var=pd.DataFrame(index=genes)), n=n_degs)
        degs = real["names"].astype(str).tolist()
        top, weights = genes.get_indexer(degs), deg_weights(real["scores"].to_numpy(float))
        B_pcs, A_pcs = (pca.transform(subsample(X, max_cells, rng)) for X in (B, A))
        for name, X, X_pcs, called in (("model", P, P_pcs, predicted_degs),
                                       ("control", C, C_pcs, []),
                                       ("ceiling", A, A_pcs, called_degs(A, C, genes, n_degs))):
            scores[name].append({**expression_scores(X, B, C, top, degs, weights,
                                                     perturbed_reference, called),
                                 **distance_scores(X_pcs, B_pcs)})
    means = {name: pd.DataFrame(rows).mean() for name, rows in scores.items()}
    # A prediction of no change has no Pearson-delta (its change is constant): no correlation, 0.
    anchor, model = means["control"].copy(), means["model"].fillna({"pearson_delta": 0.0})
    anchor["pearson_delta"] = 0.0
    for metric in RUN_METRICS:
        columns[ceiling_column(metric)] = float(means["ceiling"][metric])
        columns[calibrated_column(metric)] = calibrate(
            model[metric], anchor[metric], means["ceiling"][metric], METRICS[metric])
    return columns, centroids, None


def discrimination(prediction: np.ndarray, truths: dict[str, np.ndarray], group: str) -> float:
    """Systema's centroid accuracy as a fraction: the share of the other held-out groups whose
    real centroid change (``truths``: group → mean minus the group's control mean) lies farther
    (Euclidean) from the ``prediction``'s change for ``group`` than ``group``'s own does, a tie
    counting half. 1: closer to its own group than to every other; about 0.5 for a prediction
    that ignores the group; NaN without another group.

    Changes, not expression: held-out groups here are cell types, each with its own control, so
    raw centroids would tell the groups apart whatever the prediction. Not cross-checked against
    cell-eval's discrimination score, which ranks perturbations against one shared control in
    its own AnnData layout and would add polars and pdex to the evaluate environment; pertpy has
    no such score."""
    own = np.linalg.norm(prediction - truths[group])
    others = [np.linalg.norm(prediction - t) for g, t in truths.items() if g != group]
    if not others:
        return np.nan
    others = np.asarray(others)
    tied = np.isclose(others, own)
    return float(np.mean(((others > own) & ~tied) + 0.5 * tied))


def leiden_ari(view: ad.AnnData, labels: str, seed: int, resolution: float = 0.5) -> float:
    """Leiden clusters of ``view``'s neighbour graph into ``obs['leiden']``, and their adjusted
    Rand index against the known ``obs[labels]`` (1: the same partition, ~0: chance)."""
    sc.tl.leiden(view, resolution=resolution, random_state=seed, flavor="igraph",
                 n_iterations=2, directed=False)
    return float(adjusted_rand_score(view.obs[labels], view.obs["leiden"]))
