"""A Perturb-seq screen: simulation with known truth, cell-cycle scoring, and the per-perturbation
analyses that work in any cell embedding (a model's salient latent, a PCA): effect size against
the controls, responder calls, a Mixscape-like baseline, latent differential expression, and
their scores against the simulation's truth.

Simulation (log-rate space, then gamma-Poisson counts): base gene level + a cell-cycle programme
on the real S and G2/M genes (Tirosh et al. 2016, ``resources/cell_cycle_genes.csv``: a phase per
cell with an intensity) + a continuous heterogeneity programme (one score per cell, a loading per
gene) + a batch effect + for the responding cells of an acting knockout, its own gene programme
(strong or weak). Each knockout's cells escape (no effect) at a rate of their own; a few acting
knockouts also slow the cycle of their responders, so a plain test on all genes finds cell-cycle
genes among their DEGs. Knockouts of ``none`` effect change nothing.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Iterable

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from scipy import stats
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from pertflow.errors import DataError
from pertflow.data.preprocess import cell_cycle_genes, check_counts
from pertflow.utils import dense

log = logging.getLogger(__name__)

DEFAULTS = {
    "n_cells": 4000,
    "n_genes": 1000,
    "n_strong": 8,
    "n_weak": 8,
    "n_null": 8,
    "n_programme_genes": 20,
    "strong_lfc": (0.8, 1.5),  # |log-fold change| of a programme gene, drawn per gene
    "weak_lfc": (0.3, 0.6),
    "escape_rate": (0.15, 0.5),  # per knockout, the fraction of its cells without effect
    "n_cycle_shift": 3,  # acting knockouts whose responders cycle less
    "control_fraction": 0.2,
    "control": "non-targeting",
    "n_batches": 3,
    "n_heterogeneity_genes": 80,
    "n_mito_genes": 8,
    "mean_library_size": 3000.0,
    "dispersion": 0.3,  # gamma-Poisson overdispersion (variance = mu + dispersion * mu^2)
    "damaged_fraction": 0.02,
    "seed": 0,
}
PHASES = ("G1", "S", "G2M")
PHASE_PROBABILITIES = (0.5, 0.25, 0.25)
ARRESTED_PROBABILITIES = (0.85, 0.075, 0.075)  # responders of a cycle-shifting knockout
EFFECTS = ("strong", "weak", "none")
MIXSCAPE_LAYER = "X_pert"  # pertpy's names for the signature layer and the class columns
RESPONDER_THRESHOLD = 0.5
MIXSCAPE_NEIGHBORS = 20  # control cells averaged into each cell's perturbation signature


# ---- simulation -----------------------------------------------------------------------------
def simulate_screen(**params) -> ad.AnnData:
    """Cells × genes AnnData of one simulated cell line: integer counts in ``X``; obs
    ``perturbation`` (the guide's target, ``control`` for non-targeting), ``batch``, and the truth
    ``escaped`` (a knockout cell without effect), ``true_phase``; per knockout and per cell truth
    in ``uns['simulation']`` (see ``truth_table`` and ``truth_genes``)."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown screen simulation parameter(s) {sorted(unknown)}; "
                         f"known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    rng = np.random.default_rng(p["seed"])
    n_cells, n_genes = p["n_cells"], p["n_genes"]
    n_targets = p["n_strong"] + p["n_weak"] + p["n_null"]
    cc = cell_cycle_genes()
    n_mt, n_cc, n_het = p["n_mito_genes"], len(cc), p["n_heterogeneity_genes"]
    if n_genes < n_mt + n_cc + max(n_het, p["n_programme_genes"]) + 50:
        raise ValueError(f"n_genes={n_genes} is too few for {n_mt} mitochondrial, {n_cc} "
                         "cell-cycle and the programme genes; use n_genes >= 300.")
    if not 0 <= p["n_cycle_shift"] <= p["n_strong"] + p["n_weak"]:
        raise ValueError("n_cycle_shift must be between 0 and n_strong + n_weak")

    gene_names = [f"MT-{i + 1}" for i in range(n_mt)] + cc["gene"].tolist()
    gene_names += [f"G{i:04d}" for i in range(n_genes - len(gene_names))]
    mt = np.arange(n_mt)
    s_genes = n_mt + np.flatnonzero(cc["phase"].to_numpy() == "S")
    g2m_genes = n_mt + np.flatnonzero(cc["phase"].to_numpy() == "G2M")
    other = np.arange(n_mt + n_cc, n_genes)

    # Knockouts in random order of effect, so names say nothing of it.
    targets = [f"KO{i + 1:02d}" for i in range(n_targets)]
    effect = rng.permutation(np.repeat(EFFECTS, [p["n_strong"], p["n_weak"], p["n_null"]]))
    acting = effect != "none"
    escape_rate = rng.uniform(*p["escape_rate"], size=n_targets)
    cycle_shift = np.zeros(n_targets, bool)
    cycle_shift[rng.choice(np.flatnonzero(acting), size=p["n_cycle_shift"], replace=False)] = True
    programme = np.zeros((n_targets, n_genes))
    target_genes = {}
    for t in np.flatnonzero(acting):
        genes = np.sort(rng.choice(other, size=p["n_programme_genes"], replace=False))
        size = p["strong_lfc"] if effect[t] == "strong" else p["weak_lfc"]
        programme[t, genes] = rng.choice([-1.0, 1.0], size=len(genes)) \
            * rng.uniform(*size, size=len(genes))
        target_genes[targets[t]] = np.asarray(gene_names, dtype=object)[genes].astype(str)
    strength = np.abs(programme).sum(axis=1) / max(p["n_programme_genes"], 1)

    # Cells: controls, then knockouts in about equal numbers; batches independent of guides.
    n_control = int(round(p["control_fraction"] * n_cells))
    guide = np.concatenate([np.full(n_control, -1),
                            rng.integers(n_targets, size=n_cells - n_control)])
    guide = rng.permutation(guide)
    knockout = guide >= 0
    escaped = knockout & (rng.random(n_cells) < escape_rate[np.maximum(guide, 0)])
    responds = knockout & ~escaped & acting[np.maximum(guide, 0)]
    arrested = responds & cycle_shift[np.maximum(guide, 0)]
    phase = np.where(arrested, _draw_phase(rng, ARRESTED_PROBABILITIES, n_cells),
                     _draw_phase(rng, PHASE_PROBABILITIES, n_cells))
    cycle_intensity = rng.uniform(0.7, 1.0, size=n_cells)
    heterogeneity = rng.normal(size=n_cells)
    batch = rng.integers(p["n_batches"], size=n_cells)

    base = rng.normal(-8.5, 1.2, size=n_genes)  # log proportion of the library per gene
    base[mt] = rng.normal(-5.5, 0.3, size=n_mt)
    # Cell-cycle genes low outside their phase: with few genes, scanpy's control set is most
    # genes of the expression bins the cycle genes fall in, so G1 cells score below 0 (as scanpy
    # calls G1) only if their cycle genes sit below the typical gene.
    base[n_mt:n_mt + n_cc] = rng.normal(-9.0, 0.5, size=n_cc)
    cycle_loading = rng.uniform(1.0, 2.0, size=n_genes)
    het_genes = rng.choice(other, size=n_het, replace=False)
    het_loading = np.zeros(n_genes)
    het_loading[het_genes] = rng.normal(0.0, 0.7, size=n_het)
    batch_effect = np.zeros((p["n_batches"], n_genes))
    for b in range(p["n_batches"]):
        genes = rng.choice(other, size=100, replace=False)
        batch_effect[b, genes] = rng.normal(0.0, 0.5, size=100)
    batch_depth = rng.lognormal(0.0, 0.2, size=p["n_batches"])

    logits = base[None, :] + batch_effect[batch] + heterogeneity[:, None] * het_loading[None, :]
    for name, genes in (("S", s_genes), ("G2M", g2m_genes)):
        cells = phase == name
        logits[np.ix_(cells, genes)] += cycle_intensity[cells, None] * cycle_loading[None, genes]
    logits[responds] += programme[guide[responds]]
    damaged = rng.random(n_cells) < p["damaged_fraction"]
    logits[np.ix_(damaged, mt)] += 3.0
    proportion = np.exp(logits - logits.max(axis=1, keepdims=True))
    proportion /= proportion.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(p["mean_library_size"]), 0.35, size=n_cells) * batch_depth[batch]
    shape = 1.0 / p["dispersion"]
    rates = rng.gamma(shape, proportion * library[:, None] / shape)
    counts = sp.csr_matrix(rng.poisson(rates).astype(np.float32))

    names = np.asarray([p["control"], *targets], dtype=object)
    obs = pd.DataFrame({
        "perturbation": pd.Categorical(names[guide + 1], categories=list(names)),
        "batch": pd.Categorical([f"batch{b + 1}" for b in batch]),
        "escaped": escaped,
        "true_phase": pd.Categorical(phase, categories=list(PHASES)),
    }, index=[f"cell{i}" for i in range(n_cells)])
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=gene_names))
    adata.uns["simulation"] = {
        "params": {k: (v if isinstance(v, str) else list(v) if isinstance(v, tuple)
                       else float(v) if isinstance(v, float) else int(v)) for k, v in p.items()},
        "control": p["control"],
        "targets": np.asarray(targets),
        "effect": effect.astype(str),
        "acting": acting,
        "strength": strength,  # mean |log-fold change| over the programme genes
        "escape_rate": escape_rate,
        "cycle_shift": cycle_shift,
        "target_genes": target_genes,
        "escaped_cells": obs.index[escaped].to_numpy().astype(str),
        "true_phase": phase.astype(str),
        "heterogeneity": heterogeneity,
        "heterogeneity_genes": np.asarray(gene_names)[het_genes],
    }
    return adata


def _draw_phase(rng: np.random.Generator, probabilities, n: int) -> np.ndarray:
    return np.asarray(PHASES)[rng.choice(len(PHASES), size=n, p=probabilities)]


def truth_table(adata: ad.AnnData) -> pd.DataFrame:
    """Per knockout of a simulated screen: effect (strong, weak, none), acting, strength,
    escape_rate, cycle_shift."""
    truth = _simulation(adata)
    return pd.DataFrame({key: np.asarray(truth[key]) for key in
                         ("effect", "acting", "strength", "escape_rate", "cycle_shift")},
                        index=pd.Index(np.asarray(truth["targets"]).astype(str),
                                       name="perturbation"))


def truth_genes(adata: ad.AnnData) -> dict[str, list[str]]:
    """Each acting knockout's programme genes."""
    return {t: list(map(str, g)) for t, g in _simulation(adata)["target_genes"].items()}


def _simulation(adata: ad.AnnData) -> dict:
    if "simulation" not in adata.uns or "targets" not in adata.uns["simulation"]:
        raise DataError("no screen simulation truth in uns['simulation']; scores against the "
                        "truth need data from pertflow.screen.simulate_screen.")
    return adata.uns["simulation"]


# ---- input checks ---------------------------------------------------------------------------
def check_screen(adata: ad.AnnData, perturbation_key: str, control: str,
                 covariates: Iterable[str] = (), min_cells: int = 1,
                 counts_layer: str | None = None, perturbations: Iterable[str] | None = None,
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


def mixscape_split_by(covariates: Iterable[str]) -> str | None:
    """The covariate within whose categories the Mixscape-like baseline picks control
    neighbours: the first one (batch or lane, by convention), or none."""
    return next(iter(covariates), None)


# ---- effect size ----------------------------------------------------------------------------
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


def effect_sizes(latent: np.ndarray, labels, control: str,
                 perturbations: Iterable[str] | None = None, n_permutations: int = 1000,
                 max_cells: int = 500, seed: int = 0, folds=None) -> pd.DataFrame:
    """Per perturbation, the energy distance of its cells from the controls in ``latent``
    (cells × dims) with a permutation p-value and Benjamini-Hochberg q-value.

    E-distance rather than a cross-validated classifier's AUROC: it is the scPerturb / pertpy
    measure of a perturbation's effect (as in ``pertflow.benchmark.metrics``), it keeps growing with the
    effect where an AUROC saturates at 1 (strong knockouts stay ordered), it needs no training
    per perturbation, and the permutation test makes its p-value exact whatever the latent's
    geometry. Here in its unbiased form (means over distinct pairs), so that it is about 0 for
    no effect whatever the number of cells; pertflow.benchmark.metrics.e_distance includes self-pairs.

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
    perturbations = _perturbations(labels, control, perturbations, fold)
    per_part = max_cells // len(parts)
    controls = {f: _at_most(np.flatnonzero((labels == control) & (fold == f)), per_part, rng)
                for f in parts}
    rows = []
    for name in perturbations:
        observed, null = 0.0, np.zeros(n_permutations)
        for f in parts:
            cells = _at_most(np.flatnonzero((labels == name) & (fold == f)), per_part, rng)
            part_observed, part_null = _e_distance_permutations(
                latent[cells], latent[controls[f]], n_permutations, rng)
            observed, null = observed + part_observed / len(parts), null + part_null / len(parts)
        p_value = (1 + np.sum(null >= observed)) / (1 + n_permutations)
        rows.append((name, int(np.sum(labels == name)), observed, p_value))
    return _with_q(pd.DataFrame(rows, columns=["perturbation", "n_cells", "e_distance",
                                               "p_value"]), "e_distance")


def expression_effects(X, labels, control: str, perturbations: Iterable[str] | None = None,
                       n_permutations: int = 1000, max_cells: int = 500,
                       seed: int = 0) -> pd.DataFrame:
    """The baseline without a model: per perturbation, the mean over genes of the squared Welch
    t statistic of its cells vs the controls on ``X`` (log-normalised expression), a
    high-dimensional two-sample statistic with a diagonal covariance (as Srivastava & Du 2008),
    with a permutation p-value and BH q-value. About 1 for no effect; many weakly changed genes
    add up where a distance between cells drowns them in the variance of the rest. At most
    ``max_cells`` cells per side. Columns: n_cells, t2, p_value, q_value; sorted by t2."""
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    names = _perturbations(labels, control, perturbations)
    controls = _at_most(np.flatnonzero(labels == control), max_cells, rng)
    rows = []
    for name in names:
        cells = _at_most(np.flatnonzero(labels == name), max_cells, rng)
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


def _perturbations(labels: np.ndarray, control: str, perturbations, fold=None) -> list[str]:
    if not np.any(labels == control):
        raise DataError(f"no control cells labelled '{control}'; fix `control:`.")
    names = [x for x in pd.unique(labels) if x != control] if perturbations is None \
        else [str(x) for x in perturbations]
    if control in names:
        raise DataError(f"the control label '{control}' is among the perturbations; remove it.")
    fold = np.zeros(len(labels), int) if fold is None else np.asarray(fold)
    parts = np.unique(fold)
    few = [x for x in [control, *names]
           if min(np.sum((labels == x) & (fold == f)) for f in parts) < 2]
    if few:
        where = "" if len(parts) == 1 else f" in each of the {len(parts)} folds"
        raise DataError(f"perturbation(s) {few} have fewer than 2 cells{where}; drop them "
                        "(raise `min_cells:`).")
    return names


def _at_most(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= n else np.sort(rng.choice(rows, size=n, replace=False))


# ---- responders -----------------------------------------------------------------------------
def call_responders(latent: np.ndarray, labels, control: str,
                    perturbations: Iterable[str] | None = None,
                    significant: Iterable[str] | None = None,
                    threshold: float = RESPONDER_THRESHOLD, folds=None) -> pd.DataFrame:
    """Per cell, whether it responds to its perturbation in ``latent``; a knockout cell that
    does not is an escaper. Mixscape's classifier, in any space: the perturbation's cells are
    projected on the direction from the controls' mean to theirs, and a two-component Gaussian
    mixture with the controls' component fixed (their projections' mean and sd) gives each
    cell's posterior of the other component. A mixture along one direction rather than a kNN
    posterior: it needs no neighbourhood size, and escapers, however many, sit at the controls'
    component by construction. Three departures from Mixscape (``mixscape``), each because it
    biases the calls: the free component and its weight are fitted on the perturbation's cells
    alone (Mixscape fits them with the controls pooled in, which makes every cell's prior of
    responding its share of the pooled cells, e.g. 0.15, so true responders near the middle
    are called escapers); the direction is estimated once from all its cells (escapers sit at
    the controls' mean, so the direction is the responders' already; Mixscape's re-estimate
    from the cells called responders feeds the selection back and, with the pooled prior,
    shrinks the calls round after round); and each cell is projected on the direction of the
    other cells (leave-one-out), which keeps escapers' projections centred on the controls'.
    With ``significant`` (e.g. the perturbations of
    q < 0.05 in ``effect_sizes``), the cells of other perturbations are all escapers, as
    Mixscape calls every cell of a knockout without DE genes non-perturbed. With ``folds``
    (cross-fitted latents, see ``effect_sizes``), each fold's cells are called against its own
    controls.

    Returns a frame in the cells' order: ``responder`` (bool; False for controls),
    ``probability`` of responding and ``projection`` (both NaN for controls and cells of
    perturbations not analysed)."""
    latent = np.asarray(latent, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    fold = np.zeros(len(labels), int) if folds is None else np.asarray(folds)
    names = _perturbations(labels, control, perturbations, fold)
    keep = None if significant is None else set(map(str, significant))
    out = pd.DataFrame({"responder": np.zeros(len(labels), bool),
                        "probability": np.full(len(labels), np.nan),
                        "projection": np.full(len(labels), np.nan)})
    for name in names:
        if keep is not None and name not in keep:
            out.loc[labels == name, "probability"] = 0.0
            continue
        for f in np.unique(fold):
            rows = np.flatnonzero((labels == name) & (fold == f))
            probability, projection = _responder_probability(
                latent[rows], latent[(labels == control) & (fold == f)])
            out.loc[rows, "probability"] = probability
            out.loc[rows, "projection"] = projection
            out.loc[rows, "responder"] = probability > threshold
    return out


def _responder_probability(cells: np.ndarray,
                           controls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One perturbation's cells (rows) against the controls' (rows): each cell's posterior of
    responding and its projection. Each cell is projected on the direction of the other cells
    (leave-one-out): on the direction of all cells, its own noise, which that direction
    contains, moves an escaper towards the responders (by about dims / n_cells / |shift|²,
    a fifth of the way with 24 dims, 70 cells and a 2-sd shift)."""
    control_mean, n = controls.mean(axis=0), len(cells)
    total = cells.sum(axis=0)
    direction = total / n - control_mean
    if n < 2 or direction @ direction == 0:
        return np.zeros(n), np.zeros(n)
    others = (total[None, :] - cells) / (n - 1) - control_mean
    projection = np.einsum("ij,ij->i", cells - control_mean, others) \
        / np.einsum("ij,ij->i", others, others)
    control_projection = (controls - control_mean) @ direction / (direction @ direction)
    return _fixed_component_mixture(projection, control_projection, pooled=False), projection


def _mixture_responders(cells: np.ndarray, controls: np.ndarray, max_iter: int,
                        threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Mixscape's loop on one perturbation's cells (rows) against the controls' (rows): the
    posterior of responding and the projection of each of its cells."""
    control_mean = controls.mean(axis=0)
    responders = np.ones(len(cells), bool)
    for _ in range(max_iter):
        direction = cells[responders].mean(axis=0) - control_mean
        norm2 = direction @ direction
        if norm2 == 0:
            return np.zeros(len(cells)), np.zeros(len(cells))
        # Scaled so the controls sit near 0 and the responders near 1, as Mixscape's score.
        projection = (cells - control_mean) @ direction / norm2
        control_projection = (controls - control_mean) @ direction / norm2
        probability = _fixed_component_mixture(projection, control_projection, pooled=True)
        called = probability > threshold
        if not called.any() or np.array_equal(called, responders):
            break
        responders = called
    return probability, projection


def _fixed_component_mixture(x: np.ndarray, x0: np.ndarray, pooled: bool,
                             n_iter: int = 200) -> np.ndarray:
    """EM for weight·N(μ, σ) + (1 − weight)·N(mean(x0), sd(x0)), the controls' component
    fixed and the free one started at the perturbed cells' mean and sd; returns each perturbed
    cell's posterior of the free component. ``pooled``: fitted on the perturbed (``x``) and
    control (``x0``) projections together, as pertpy's MixscapeGaussianMixture, so the weight,
    and with it every perturbed cell's prior of responding, is diluted by the controls;
    otherwise on the perturbed cells alone, whose share of responders the weight then is. A
    free component that ends below the controls' is no response: all posteriors 0."""
    n, mean0, sd0 = len(x), float(x0.mean()), max(float(x0.std()), 1e-8)
    weight, mean, sd = 0.5, float(x.mean()), max(float(x.std()), 1e-3 * sd0)
    if pooled:
        weight, x = n / (n + len(x0)), np.concatenate([x, x0])
    log0 = stats.norm.logpdf(x, mean0, sd0)
    for _ in range(n_iter):
        a = np.log(weight) + stats.norm.logpdf(x, mean, sd)
        posterior = np.exp(a - np.logaddexp(a, np.log1p(-weight) + log0))
        total = posterior.sum()
        if total < 1e-8:
            return np.zeros(n)
        new_weight, new_mean = total / len(x), posterior @ x / total
        sd = max(float(np.sqrt(posterior @ (x - new_mean) ** 2 / total)), 1e-3 * sd0)
        converged = (abs(new_weight - weight) < 1e-7
                     and abs(new_mean - mean) < 1e-7 * (1 + abs(mean)))
        weight, mean = min(max(new_weight, 1e-9), 1 - 1e-9), new_mean
        if converged:
            break
    return posterior[:n] if mean > mean0 else np.zeros(n)


# ---- Mixscape-like baseline -----------------------------------------------------------------
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
    names = _perturbations(labels, control, None)
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
        probability, _ = _mixture_responders(signature[np.ix_(rows, genes)],
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


# ---- differential expression ----------------------------------------------------------------
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
    for name in _perturbations(labels, control, perturbations):
        rows = np.flatnonzero((labels == name) & use)
        if len(rows) == 0:
            rows = np.flatnonzero(labels == name)  # no responders: all its cells
        rows = _at_most(rows, max_cells, rng)
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
    names = _perturbations(labels, control, perturbations)
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


# ---- scores against the truth ---------------------------------------------------------------
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
    rows = _at_most(np.arange(len(labels)), max_cells, rng)
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
