"""A seeded simulation of a Kang-like stimulation experiment with raw counts and known truth.

Generative story (log-rate space, then gamma-Poisson counts):
  base gene level + lineage markers + cell-type markers + donor effect + cell-cycle program
  (both conditions); cell types belong to blood-like lineages (lymphoid, myeloid)
  + for stimulated cells, with ``response_sharing: lineage`` (default): a shared interferon-like
    module scaled by a strength that is similar within a lineage and differs between lineages,
    a lineage response programme (the same genes, similar sign and size, in every type of the
    lineage) and a few smaller response genes specific to each type;
    with ``response_sharing: independent``: each type's response drawn independently of every
    other type's (the interferon-like genes respond in all types, but with each type's own signs
    and sizes; no lineage programme), so transferring another group's response only hurts;
  + with ``n_perturbations: 2`` or 3, further conditions, each with a response of its own on the
    "G" genes (never the interferon-like ones): "infected", a programme shared by every type (the
    same genes, similar sign and size everywhere, plus a few small genes of each type's own), and
    "treated", type-specific (each type responds on its own genes with its own signs, little
    shared). Cells are spread evenly over control and the perturbations; the extra responses come
    from a generator of their own, so the "stimulated" truth does not depend on how many there
    are, and with one perturbation (the default) the data are those of earlier versions.
Interferon-stimulated genes are low at rest.
In lineage mode a held-out type responds most like the types whose controls resemble it, so a
single gene-space shift is not the optimal predictor. A few mitochondrial genes and some damaged
(high-MT) cells exercise QC. The true per-type log-fold change of the expected expression, the
lineages and the interferon strengths are stored in ``uns['simulation']``; with more than one
perturbation, also the labels (``perturbations``), each one's true log-fold changes
(``true_response_lfc_by_perturbation``) and the infected programme's genes (``infected_genes``).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from pertflow.simulate.counts import gamma_poisson_counts

DEFAULTS = {
    "n_cells": 3000,
    "n_genes": 1000,
    "n_cell_types": 6,
    "n_donors": 2,
    "n_ifn_genes": 60,
    "n_specific_response_genes": 15,
    "n_lineage_marker_genes": 30,
    "n_lineage_response_genes": 30,
    "response_sharing": "lineage",  # or "independent"
    "n_cell_cycle_genes": 40,
    "n_mito_genes": 8,
    "mean_library_size": 2000.0,
    "dispersion": 0.3,  # gamma-Poisson overdispersion (variance = mu + dispersion * mu^2)
    "damaged_fraction": 0.02,
    "n_perturbations": 1,  # 1 to 3: "stimulated", then "infected" (shared), "treated" (per type)
    "seed": 0,
}
TYPE_NAMES = ["T-helper", "Monocyte", "B", "T-cytotoxic", "NK", "Dendritic", "Megakaryocyte"]
# TYPE_NAMES is ordered so that both lineages are present from 2 types on, with two types or
# more each from 6 types on.
LINEAGE = {"T-helper": "lymphoid", "B": "lymphoid", "T-cytotoxic": "lymphoid", "NK": "lymphoid",
           "Monocyte": "myeloid", "Dendritic": "myeloid", "Megakaryocyte": "myeloid"}
RESPONSE_SHARING = ("lineage", "independent")
CONTROL = "control"
# Condition labels of the perturbations, in order: the first ``n_perturbations`` are simulated.
PERTURBATIONS = ("stimulated", "infected", "treated")


def simulate(**params) -> ad.AnnData:
    """Return cells × genes AnnData with integer counts in ``X`` and the truth in ``uns``."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown simulation parameter(s) {sorted(unknown)}; "
                         f"known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    if p["response_sharing"] not in RESPONSE_SHARING:
        raise ValueError(f"response_sharing must be one of {list(RESPONSE_SHARING)}, "
                         f"not {p['response_sharing']!r}")
    if not 2 <= p["n_cell_types"] <= len(TYPE_NAMES):
        raise ValueError(f"n_cell_types must be between 2 and {len(TYPE_NAMES)}")
    n_pert = p["n_perturbations"]
    if isinstance(n_pert, bool) or not isinstance(n_pert, (int, np.integer)) \
            or not 1 <= n_pert <= len(PERTURBATIONS):
        raise ValueError(f"n_perturbations must be an integer from 1 to {len(PERTURBATIONS)} "
                         f"({', '.join(PERTURBATIONS)}), not {n_pert!r}")
    labels = [CONTROL, *PERTURBATIONS[:n_pert]]
    rng = np.random.default_rng(p["seed"])
    n_cells, n_genes, n_types = p["n_cells"], p["n_genes"], p["n_cell_types"]
    types = TYPE_NAMES[:n_types]
    lineage_names = sorted({LINEAGE[t] for t in types})
    lineage = np.array([lineage_names.index(LINEAGE[t]) for t in types])

    # Gene roles, laid out in blocks so the truth is easy to read.
    n_mt, n_ifn, n_cc = p["n_mito_genes"], p["n_ifn_genes"], p["n_cell_cycle_genes"]
    n_spec, n_lin_resp = p["n_specific_response_genes"], p["n_lineage_response_genes"]
    gene_names = [f"MT-{i}" for i in range(n_mt)] + [f"ISG{i}" for i in range(n_ifn)] \
        + [f"CC{i}" for i in range(n_cc)]
    gene_names += [f"G{i}" for i in range(n_genes - len(gene_names))]
    mt, ifn = np.arange(n_mt), np.arange(n_mt, n_mt + n_ifn)
    cc = np.arange(n_mt + n_ifn, n_mt + n_ifn + n_cc)
    other = np.arange(n_mt + n_ifn + n_cc, n_genes)

    # Unequal cell-type sizes.
    proportions = rng.dirichlet(np.full(n_types, 2.0))
    proportions = np.sort(np.maximum(proportions, 0.04))[::-1]
    proportions /= proportions.sum()
    cell_type = rng.choice(n_types, size=n_cells, p=proportions)
    # Condition: uniform over control and the perturbations (code 0 is control, j the j-th
    # perturbation); with one perturbation, stimulated where the draw is below 0.5, as before.
    condition = n_pert - np.minimum((rng.random(n_cells) * (n_pert + 1)).astype(int), n_pert)
    donor = rng.integers(p["n_donors"], size=n_cells)

    base = rng.normal(-9.0, 1.3, size=n_genes)  # log proportion of the library per gene
    base[mt] = rng.normal(-6.0, 0.3, size=n_mt)
    base[ifn] = rng.normal(-10.0, 0.8, size=n_ifn)  # interferon-stimulated genes: low at rest
    # Markers: a block shared by the types of a lineage, and each type's own.
    markers = np.zeros((n_types, n_genes))
    n_lin_mark = min(p["n_lineage_marker_genes"], len(other))
    for lin in range(len(lineage_names)):
        genes = rng.choice(other, size=n_lin_mark, replace=False)
        markers[np.ix_(lineage == lin, genes)] += rng.uniform(1.0, 2.5, size=n_lin_mark)
    for t in range(n_types):
        genes = rng.choice(other, size=25, replace=False)
        markers[t, genes] += rng.uniform(1.0, 3.0, size=25)

    response = np.zeros((n_types, n_genes))
    if p["response_sharing"] == "lineage":
        # Interferon module: every gene goes up in every type (shared direction), with a loading
        # per gene flavoured per lineage, and a strength per type: one lineage strong, the
        # other weak, types of a lineage alike.
        ifn_loading = rng.uniform(0.8, 2.5, size=n_ifn) \
            * rng.uniform(0.5, 1.5, size=(len(lineage_names), n_ifn))
        levels = rng.permutation([rng.uniform(1.2, 1.7), rng.uniform(0.4, 0.7)])
        ifn_strength = levels[lineage] * rng.uniform(0.9, 1.1, size=n_types)
        response[:, ifn] = ifn_strength[:, None] * ifn_loading[lineage] \
            * rng.uniform(0.8, 1.25, size=(n_types, n_ifn))
        # Lineage response programme: the same genes, sign and rough size in each of its types.
        n_lin_resp = min(n_lin_resp, len(other))
        for lin in range(len(lineage_names)):
            genes = rng.choice(other, size=n_lin_resp, replace=False)
            effect = rng.choice([-1.0, 1.0], size=n_lin_resp) * rng.uniform(1.0, 2.0, n_lin_resp)
            for t in np.flatnonzero(lineage == lin):
                response[t, genes] += effect * rng.uniform(0.6, 1.4, size=n_lin_resp)
        spec_size = (0.7, 1.6)
    else:
        # No shared module: the interferon-like genes respond in every type, but each type with
        # its own signs and sizes, and each type has as many response genes of its own as a
        # lineage-mode type has (lineage programme and specific genes).
        ifn_strength = np.zeros(n_types)
        response[:, ifn] = rng.choice([-1.0, 1.0], size=(n_types, n_ifn)) \
            * rng.uniform(0.8, 2.5, size=(n_types, n_ifn))
        n_spec += n_lin_resp
        spec_size = (0.8, 2.0)
    n_spec = min(n_spec, len(other))
    for t in range(n_types):  # each type's own response genes, up or down
        genes = rng.choice(other, size=n_spec, replace=False)
        response[t, genes] += rng.choice([-1.0, 1.0], size=n_spec) * rng.uniform(*spec_size, n_spec)
    donor_effect = np.zeros((p["n_donors"], n_genes))
    for d in range(p["n_donors"]):
        genes = rng.choice(other, size=50, replace=False)
        donor_effect[d, genes] = rng.normal(0.0, 0.5, size=50)
    cc_loading = rng.uniform(1.0, 2.5, size=n_cc)
    cycling = rng.random(n_cells) < 0.25  # a proliferating fraction in both conditions
    cc_score = np.where(cycling, rng.uniform(0.6, 1.0, n_cells), rng.uniform(0.0, 0.1, n_cells))

    responses = [response]  # per perturbation, in the order of PERTURBATIONS
    if n_pert > 1:  # from a generator of their own: the draws above stay those of one perturbation
        pert_rng = np.random.default_rng(np.random.SeedSequence(p["seed"]).spawn(1)[0])
        infected, infected_genes = _infected_response(pert_rng, p, n_types, n_genes, other)
        responses.append(infected)
        if n_pert > 2:
            responses.append(_treated_response(pert_rng, p, n_types, n_genes, other))

    def log_rates(rows: slice) -> np.ndarray:
        logits = base[None, :] + markers[cell_type[rows]] + donor_effect[donor[rows]]
        logits[:, cc] += cc_score[rows, None] * cc_loading[None, :]
        for code, effect in enumerate(responses, start=1):
            perturbed = condition[rows] == code
            logits[perturbed] += effect[cell_type[rows][perturbed]]
        return logits

    counts = gamma_poisson_counts(rng, log_rates, n_cells, n_genes, mt, p["damaged_fraction"],
                                  p["mean_library_size"], p["dispersion"])

    # Truth: log-fold change of each type's expected normalised expression under each
    # perturbation.
    true_lfcs = []
    for effect in responses:
        true_lfc = np.zeros((n_types, n_genes))
        for t in range(n_types):
            ctrl = base + markers[t]
            stim = ctrl + effect[t]
            true_lfc[t] = (stim - np.log(np.exp(stim).sum())) \
                - (ctrl - np.log(np.exp(ctrl).sum()))
        true_lfcs.append(true_lfc.astype(np.float32))

    obs = pd.DataFrame({
        "condition": pd.Categorical(np.asarray(labels)[condition], categories=labels),
        "cell_type": pd.Categorical(np.asarray(types)[cell_type], categories=types),
        "lineage": pd.Categorical(np.asarray(lineage_names)[lineage[cell_type]],
                                  categories=lineage_names),
        "donor": pd.Categorical([f"donor{d}" for d in donor]),
        "cycling": cycling,
    }, index=[f"cell{i}" for i in range(n_cells)])
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=gene_names))
    adata.uns["simulation"] = {
        # n_perturbations is recorded when above 1 only, so that a default run's truth is the
        # same as before the parameter existed (read it with .get("n_perturbations", 1)).
        "params": {k: (v if isinstance(v, str) else float(v) if isinstance(v, float) else int(v))
                   for k, v in p.items() if k != "n_perturbations" or v != 1},
        "cell_types": types,
        "lineages": [lineage_names[lin] for lin in lineage],
        "ifn_strength": ifn_strength,
        "true_response_lfc": true_lfcs[0],  # of the first perturbation, "stimulated"
        "ifn_genes": np.asarray(gene_names)[ifn],
        "cell_cycle_genes": np.asarray(gene_names)[cc],
    }
    if n_pert > 1:
        adata.uns["simulation"] |= {
            "perturbations": list(PERTURBATIONS[:n_pert]),
            "true_response_lfc_by_perturbation": dict(zip(PERTURBATIONS, true_lfcs)),
            "infected_genes": np.asarray(gene_names)[infected_genes],
        }
    return adata


def _infected_response(rng, p, n_types, n_genes, other):
    """A programme shared by every type: the same genes (as many as the interferon-like module),
    signs and rough sizes everywhere, plus a few smaller genes of each type's own. Returns the
    types × genes log-rate effect and the programme's gene indices (sorted)."""
    response = np.zeros((n_types, n_genes))
    n_prog = min(p["n_ifn_genes"], len(other))
    genes = np.sort(rng.choice(other, size=n_prog, replace=False))
    effect = rng.choice([-1.0, 1.0], size=n_prog) * rng.uniform(1.0, 2.0, size=n_prog)
    response[:, genes] = effect * rng.uniform(0.8, 1.25, size=(n_types, n_prog))
    n_own = min(p["n_specific_response_genes"] // 3, len(other))
    for t in range(n_types):
        own = rng.choice(other, size=n_own, replace=False)
        response[t, own] += rng.choice([-1.0, 1.0], size=n_own) * rng.uniform(0.4, 0.8, n_own)
    return response, genes


def _treated_response(rng, p, n_types, n_genes, other):
    """Type-specific: each type responds on its own genes (as many as the interferon-like module
    and the specific genes together) with its own signs and sizes; what is shared is chance."""
    response = np.zeros((n_types, n_genes))
    n_own = min(p["n_ifn_genes"] + p["n_specific_response_genes"], len(other))
    for t in range(n_types):
        genes = rng.choice(other, size=n_own, replace=False)
        response[t, genes] = rng.choice([-1.0, 1.0], size=n_own) * rng.uniform(0.8, 2.0, n_own)
    return response
