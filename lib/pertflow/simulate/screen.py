"""A seeded simulation of a Perturb-seq screen with known truth: one cell line, strong, weak and
null knockouts with escapers.

Generative story (log-rates, then the gamma-Poisson counts of ``pertflow.simulate.counts``):
base gene level + a cell-cycle programme on the real S and G2/M genes (Tirosh et al. 2016,
``resources/cell_cycle_genes.csv``: a phase per cell with an intensity) + a continuous
heterogeneity programme (one score per cell, a loading per gene) + a batch effect + for the
responding cells of an acting knockout, its own gene programme (strong or weak). Each knockout's
cells escape (no effect) at a rate of their own; a few acting knockouts also slow the cycle of
their responders, so a plain test on all genes finds cell-cycle genes among their DEGs.
Knockouts of ``none`` effect change nothing. A batch also scales its cells' library sizes.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from pertflow.data.preprocess import cell_cycle_genes
from pertflow.errors import DataError
from pertflow.simulate.counts import gamma_poisson_counts

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

    def log_rates(rows: slice) -> np.ndarray:
        logits = base[None, :] + batch_effect[batch[rows]] \
            + heterogeneity[rows, None] * het_loading[None, :]
        for name, genes in (("S", s_genes), ("G2M", g2m_genes)):
            cells = phase[rows] == name
            logits[np.ix_(cells, genes)] += cycle_intensity[rows][cells, None] \
                * cycle_loading[None, genes]
        responding = responds[rows]
        logits[responding] += programme[guide[rows][responding]]
        return logits

    counts = gamma_poisson_counts(rng, log_rates, n_cells, n_genes, mt, p["damaged_fraction"],
                                  p["mean_library_size"], p["dispersion"],
                                  library_scale=batch_depth[batch])

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
                        "truth need data from pertflow.simulate.screen.simulate_screen.")
    return adata.uns["simulation"]
