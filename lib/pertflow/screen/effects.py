"""A perturbation's effect against the controls, with a permutation test: the E-distance in a
cell embedding (a model's salient latent, a PCA) and, without a model, a statistic of the
expression."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import cdist

from pertflow.screen.selection import at_most, perturbation_names
from pertflow.utils import dense


def effect_sizes(latent: np.ndarray, labels, control: str,
                 perturbations: Iterable[str] | None = None, *, n_permutations: int,
                 max_cells: int = 500, seed: int = 0, folds=None) -> pd.DataFrame:
    """Per perturbation, the energy distance of its cells from the controls in ``latent``
    (cells × dims) with a permutation p-value and Benjamini-Hochberg q-value.

    E-distance rather than a cross-validated classifier's AUROC: it is the scPerturb / pertpy
    measure of a perturbation's effect (as in ``pertflow.benchmark.metrics``), it keeps growing
    with the effect where an AUROC saturates at 1 (strong knockouts stay ordered), it needs no
    training per perturbation, and the permutation test makes its p-value exact whatever the
    latent's geometry. Here in its unbiased form (means over distinct pairs), so that it is about
    0 for no effect whatever the number of cells; ``pertflow.benchmark.metrics.e_distance``
    includes self-pairs.

    ``folds`` (one per cell): cross-fitted latents, each fold's cells embedded by a model that
    did not train on them, so comparable only within a fold. The E-distance is then the mean of
    the folds' (each fold's cells against its own controls) and its null the mean of the folds'
    independent permutation nulls. At most ``max_cells`` cells per side (split between the folds;
    one seeded draw of controls shared by all perturbations). Columns: n_cells, e_distance,
    p_value, q_value; sorted by e_distance."""
    latent = np.asarray(latent, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), int) if folds is None else np.asarray(folds)
    parts = np.unique(fold)
    perturbations = perturbation_names(labels, control, perturbations, fold)
    per_part = max_cells // len(parts)
    controls = {f: at_most(np.flatnonzero((labels == control) & (fold == f)), per_part, rng)
                for f in parts}
    rows = []
    for name in perturbations:
        observed, null = 0.0, np.zeros(n_permutations)
        for f in parts:
            cells = at_most(np.flatnonzero((labels == name) & (fold == f)), per_part, rng)
            part_observed, part_null = _e_distance_permutations(
                latent[cells], latent[controls[f]], n_permutations, rng)
            observed, null = observed + part_observed / len(parts), null + part_null / len(parts)
        p_value = (1 + np.sum(null >= observed)) / (1 + n_permutations)
        rows.append((name, int(np.sum(labels == name)), observed, p_value))
    return _with_q(pd.DataFrame(rows, columns=["perturbation", "n_cells", "e_distance",
                                               "p_value"]), "e_distance")


def expression_effects(X, labels, control: str, perturbations: Iterable[str] | None = None,
                       *, n_permutations: int, max_cells: int = 500,
                       seed: int = 0) -> pd.DataFrame:
    """The baseline without a model: per perturbation, the mean over genes of the squared Welch
    t statistic of its cells vs the controls on ``X`` (log-normalised expression), a
    high-dimensional two-sample statistic with a diagonal covariance (as Srivastava & Du 2008),
    with a permutation p-value and BH q-value. About 1 for no effect; many weakly changed genes
    add up where a distance between cells drowns them in the variance of the rest. At most
    ``max_cells`` cells per side. Columns: n_cells, t2, p_value, q_value; sorted by t2."""
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    names = perturbation_names(labels, control, perturbations)
    controls = at_most(np.flatnonzero(labels == control), max_cells, rng)
    rows = []
    for name in names:
        cells = at_most(np.flatnonzero(labels == name), max_cells, rng)
        pooled = dense(X[np.r_[cells, controls]]).astype(np.float64)
        observed, null = _permutation_test(lambda Z: _mean_t2(pooled, Z), len(pooled),
                                           len(cells), n_permutations, rng)
        p_value = (1 + np.sum(null >= observed)) / (1 + n_permutations)
        rows.append((name, int(np.sum(labels == name)), observed, p_value))
    return _with_q(pd.DataFrame(rows, columns=["perturbation", "n_cells", "t2", "p_value"]), "t2")


def _mean_t2(pooled: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Mean over genes (columns of ``pooled``) of the squared Welch t of each labelling (rows of
    the 0/1 ``Z``: group A) against the rest; genes constant over the pooled cells count 0."""
    n_a = Z[0].sum()
    n_b = len(pooled) - n_a
    sum_a, sq_a = Z @ pooled, Z @ pooled ** 2
    sum_b, sq_b = pooled.sum(axis=0) - sum_a, (pooled ** 2).sum(axis=0) - sq_a
    mean_a, mean_b = sum_a / n_a, sum_b / n_b
    var_a = np.maximum(sq_a - n_a * mean_a ** 2, 0) / (n_a - 1)
    var_b = np.maximum(sq_b - n_b * mean_b ** 2, 0) / (n_b - 1)
    se2 = var_a / n_a + var_b / n_b
    varies = pooled.std(axis=0) > 0
    t2 = np.divide((mean_a - mean_b) ** 2, se2, out=np.zeros_like(se2), where=se2 > 0)
    return t2[:, varies].mean(axis=1)


def _with_q(table: pd.DataFrame, statistic: str) -> pd.DataFrame:
    table["q_value"] = stats.false_discovery_control(table["p_value"]) if len(table) else []
    return table.set_index("perturbation").sort_values(statistic, ascending=False)


def _e_distance_permutations(A: np.ndarray, B: np.ndarray, n_permutations: int,
                             rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """Unbiased E-distance of A vs B and of ``n_permutations`` random relabellings of the pooled
    cells, all from one distance matrix: with z the 0/1 indicator of group A,
    sum_AA = zᵀDz, sum_AB = z·(D1) − sum_AA, sum_BB = 1ᵀD1 − sum_AA − 2·sum_AB."""
    D = cdist(np.vstack([A, B]), np.vstack([A, B]))
    n, n_a = len(D), len(A)
    n_b = n - n_a
    row_sums, total = D.sum(axis=1), D.sum()

    def e(Z: np.ndarray) -> np.ndarray:
        s_aa = np.einsum("pi,pi->p", Z @ D, Z)
        s_ab = Z @ row_sums - s_aa
        s_bb = total - s_aa - 2 * s_ab
        return 2 * s_ab / (n_a * n_b) - s_aa / (n_a * (n_a - 1)) - s_bb / (n_b * (n_b - 1))

    return _permutation_test(e, n, n_a, n_permutations, rng)


def _permutation_test(statistic: Callable[[np.ndarray], np.ndarray], n: int, n_a: int,
                      n_permutations: int, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """``statistic`` of the labelling that puts the first ``n_a`` of ``n`` pooled cells in
    group A, and of ``n_permutations`` random labellings; it maps 0/1 labellings (rows, m × n)
    to one value each."""
    observed = float(statistic(np.r_[np.ones(n_a), np.zeros(n - n_a)][None])[0])
    null = np.empty(n_permutations)
    for start in range(0, n_permutations, 250):  # bounded memory: 250 × n labellings at once
        m = min(250, n_permutations - start)
        Z = np.zeros((m, n))
        picks = np.argsort(rng.random((m, n)), axis=1)[:, :n_a]
        np.put_along_axis(Z, picks, 1.0, axis=1)
        null[start:start + m] = statistic(Z)
    return observed, null
