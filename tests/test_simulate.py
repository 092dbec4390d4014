"""The simulation's lineages: same-lineage types look and respond alike, so a held-out type is
best predicted from the types whose controls resemble it; in independent mode nothing transfers.
With more perturbations: "infected" responds alike in every type, "treated" in each its own way."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from pertflow.data.preprocess import TARGET_SUM
from pertflow.simulate import counts
from pertflow.simulate.experiment import PERTURBATIONS, simulate
from pertflow.utils import write_h5ad

DEFAULT_RUN = {"n_cells": 3000, "n_genes": 1000, "n_cell_types": 6, "seed": 0}  # config.yaml


def means(adata):
    """Per type (in uns order): control and stimulated mean log-normalised expression."""
    adata = adata.copy()
    sc.pp.normalize_total(adata, target_sum=TARGET_SUM)
    sc.pp.log1p(adata)
    X = adata.X.toarray()
    cell_type = adata.obs["cell_type"].to_numpy()
    stim = (adata.obs["condition"] == "stimulated").to_numpy()
    types = adata.uns["simulation"]["cell_types"]
    control = np.array([X[(cell_type == t) & ~stim].mean(0) for t in types])
    stimulated = np.array([X[(cell_type == t) & stim].mean(0) for t in types])
    return control, stimulated


def similarity(control):
    """Pearson correlation of control profiles centred on the mean over types."""
    return np.corrcoef(control - control.mean(0))


def softmax(x, tau=0.1):
    w = np.exp((x - x.max()) / tau)
    return w / w.sum()


def same_vs_other(matrix, lineages):
    """Per type: mean of ``matrix`` over the other types of its lineage, and over the others."""
    lineages = np.asarray(lineages)
    same, other = [], []
    for i, lin in enumerate(lineages):
        mates = (lineages == lin) & (np.arange(len(lineages)) != i)
        same.append(matrix[i, mates].mean())
        other.append(matrix[i, lineages != lin].mean())
    return np.array(same), np.array(other)


@pytest.fixture(scope="module")
def lineage_run():
    adata = simulate(**DEFAULT_RUN)
    return adata, *means(adata)


@pytest.fixture(scope="module")
def independent_run():
    adata = simulate(**DEFAULT_RUN, response_sharing="independent")
    return adata, *means(adata)


def test_types_belong_to_lineages_like_blood_cells():
    for n_types in range(2, 8):
        truth = simulate(n_cells=200, n_genes=200, n_cell_types=n_types).uns["simulation"]
        assert len(truth["lineages"]) == n_types
        assert set(truth["lineages"]) == {"lymphoid", "myeloid"}
    truth = simulate(n_cells=200, n_genes=200, n_cell_types=6).uns["simulation"]
    assert dict(zip(truth["cell_types"], truth["lineages"])) == {
        "T-helper": "lymphoid", "Monocyte": "myeloid", "B": "lymphoid",
        "T-cytotoxic": "lymphoid", "NK": "lymphoid", "Dendritic": "myeloid"}


def test_lineage_column_truth_and_round_trip(lineage_run, tmp_path):
    adata = lineage_run[0]
    truth = adata.uns["simulation"]
    lineage_of = dict(zip(truth["cell_types"], truth["lineages"]))
    assert (adata.obs["lineage"].astype(str) == adata.obs["cell_type"].map(lineage_of)).all()
    assert truth["params"]["response_sharing"] == "lineage"
    # Interferon strength: alike within a lineage, different between the two.
    strength, lineages = truth["ifn_strength"], np.asarray(truth["lineages"])
    lymphoid, myeloid = strength[lineages == "lymphoid"], strength[lineages == "myeloid"]
    assert max(np.ptp(lymphoid), np.ptp(myeloid)) < abs(lymphoid.mean() - myeloid.mean())
    write_h5ad(adata, tmp_path / "sim.h5ad")


def test_same_lineage_types_look_and_respond_alike(lineage_run):
    adata, control, _ = lineage_run
    truth = adata.uns["simulation"]
    response = np.corrcoef(truth["true_response_lfc"])
    same, other = same_vs_other(response, truth["lineages"])
    assert np.all(same > other + 0.2), (same, other)
    assert same.mean() < 0.98  # each type keeps a response of its own
    # In the counts: control profiles (log-normalised means) of one lineage are closer.
    same, other = same_vs_other(similarity(control), truth["lineages"])
    assert np.all(same > other + 0.2), (same, other)
    same, other = same_vs_other(np.corrcoef(control), truth["lineages"])
    assert np.all(same > other), (same, other)


def test_independent_responses_are_unrelated(independent_run):
    adata = independent_run[0]
    truth = adata.uns["simulation"]
    response = np.corrcoef(truth["true_response_lfc"])
    off = response[np.triu_indices(len(response), 1)]
    assert abs(off.mean()) < 0.1 and np.abs(off).max() < 0.35, off
    assert np.all(truth["ifn_strength"] == 0) and truth["params"]["response_sharing"] \
        == "independent"
    # Lineages still shape the control state.
    same, other = same_vs_other(similarity(independent_run[1]), truth["lineages"])
    assert np.all(same > other + 0.2)


def transfer_errors(adata, control):
    """Per held-out type: squared error of its true response predicted by no change, by the plain
    average of the other types' responses, and by their softmax-of-similarity weighted average."""
    lfc = adata.uns["simulation"]["true_response_lfc"].astype(np.float64)
    sim = similarity(control)
    errors = []
    for i in range(len(lfc)):
        others = np.arange(len(lfc)) != i
        weighted = softmax(sim[i, others]) @ lfc[others]
        errors.append([np.mean((pred - lfc[i]) ** 2)
                       for pred in (0.0, lfc[others].mean(0), weighted)])
    return np.array(errors).T


def test_similarity_weighted_transfer_beats_plain_average(lineage_run):
    adata, control, _ = lineage_run
    unchanged, average, weighted = transfer_errors(adata, control)
    assert np.all(weighted < average), (weighted, average)
    assert weighted.mean() < 0.7 * average.mean() and average.mean() < unchanged.mean()


def test_in_independent_mode_transfer_hurts(independent_run):
    adata, control, _ = independent_run
    unchanged, average, weighted = transfer_errors(adata, control)
    assert np.all(unchanged < average) and np.all(unchanged < weighted)


def r2_of_predictions(control, stimulated, top=100):
    """Per held-out type: squared Pearson, over its `top` most changed genes, of predicted vs real
    stimulated means for controls unchanged, plain average shift, similarity-weighted shift."""
    shift, sim = stimulated - control, similarity(control)
    r2 = []
    for i in range(len(control)):
        others = np.arange(len(control)) != i
        genes = np.argsort(-np.abs(shift[i]))[:top]
        preds = (control[i], control[i] + shift[others].mean(0),
                 control[i] + softmax(sim[i, others]) @ shift[others])
        r2.append([np.corrcoef(pred[genes], stimulated[i, genes])[0, 1] ** 2 for pred in preds])
    return np.array(r2).T


def test_default_run_rewards_similarity_and_stays_non_trivial(lineage_run):
    unchanged, average, weighted = r2_of_predictions(*lineage_run[1:])
    assert unchanged.mean() + 0.1 < average.mean() < weighted.mean() - 0.1
    assert np.all(weighted > average) and weighted.mean() < 0.95


def test_independent_run_rewards_leaving_controls_unchanged(independent_run):
    unchanged, average, weighted = r2_of_predictions(*independent_run[1:])
    assert unchanged.mean() > average.mean() and unchanged.mean() > weighted.mean()


def test_unknown_response_sharing_is_refused():
    with pytest.raises(ValueError, match=r"response_sharing.*\['lineage', 'independent'\]"):
        simulate(n_cells=200, n_genes=200, response_sharing="lineages")


def test_independent_mode_is_deterministic_per_seed():
    kwargs = {"n_cells": 400, "n_genes": 200, "response_sharing": "independent"}
    a, b = simulate(**kwargs, seed=5), simulate(**kwargs, seed=5)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    np.testing.assert_array_equal(a.uns["simulation"]["true_response_lfc"],
                                  b.uns["simulation"]["true_response_lfc"])
    assert (simulate(**kwargs, seed=6).X != a.X).nnz > 0


def test_default_is_one_perturbation_as_before():
    """One perturbation by default, and the numbers of the simulation before n_perturbations (a
    change in the random stream shows here; numpy's Generator keeps its streams across versions)."""
    adata = simulate(n_cells=300, n_genes=200, seed=0)
    assert list(adata.obs["condition"].cat.categories) == ["control", "stimulated"]
    assert adata.obs["condition"].value_counts().to_dict() == {"control": 159, "stimulated": 141}
    assert adata.X.nnz == 38722 and adata.X.sum() == 634822
    truth = adata.uns["simulation"]
    assert "n_perturbations" not in truth["params"] and "perturbations" not in truth
    assert "true_response_lfc_by_perturbation" not in truth
    same = simulate(n_cells=300, n_genes=200, seed=0, n_perturbations=1)
    assert (same.X != adata.X).nnz == 0 and same.obs.equals(adata.obs)
    np.testing.assert_array_equal(same.uns["simulation"]["true_response_lfc"],
                                  truth["true_response_lfc"])


@pytest.fixture(scope="module")
def three_run():
    adata = simulate(**DEFAULT_RUN, n_perturbations=3)
    return adata, shifts(adata)


def shifts(adata):
    """Per condition label: per type (in uns order) mean log-normalised expression minus the
    type's control mean."""
    adata = adata.copy()
    sc.pp.normalize_total(adata, target_sum=TARGET_SUM)
    sc.pp.log1p(adata)
    X = adata.X.toarray()
    cell_type, condition = adata.obs["cell_type"].to_numpy(), adata.obs["condition"].to_numpy()
    types = adata.uns["simulation"]["cell_types"]
    return {label: np.array([X[(cell_type == t) & (condition == label)].mean(0)
                             - X[(cell_type == t) & (condition == "control")].mean(0)
                             for t in types])
            for label in PERTURBATIONS}


def off_diagonal(matrix):
    return matrix[np.triu_indices(len(matrix), 1)]


def test_three_perturbations_labels_cells_and_truth(three_run, lineage_run):
    adata = three_run[0]
    assert PERTURBATIONS == ("stimulated", "infected", "treated")
    assert list(adata.obs["condition"].cat.categories) == ["control", *PERTURBATIONS]
    per_cell = adata.obs.groupby(["cell_type", "condition"], observed=False).size()
    assert len(per_cell) == 6 * 4 and per_cell.min() >= 20, per_cell
    truth = adata.uns["simulation"]
    assert truth["params"]["n_perturbations"] == 3
    assert list(truth["perturbations"]) == list(PERTURBATIONS)
    by_perturbation = truth["true_response_lfc_by_perturbation"]
    assert list(by_perturbation) == list(PERTURBATIONS)
    assert all(lfc.shape == (6, adata.n_vars) for lfc in by_perturbation.values())
    # The stimulated response is that of the one-perturbation run; the others sit on G genes.
    np.testing.assert_array_equal(by_perturbation["stimulated"], truth["true_response_lfc"])
    np.testing.assert_array_equal(truth["true_response_lfc"],
                                  lineage_run[0].uns["simulation"]["true_response_lfc"])
    infected = set(truth["infected_genes"])
    assert len(infected) == 60 and all(g.startswith("G") for g in infected)
    assert not infected & set(truth["ifn_genes"])
    two = simulate(n_cells=400, n_genes=200, n_perturbations=2)
    assert list(two.obs["condition"].cat.categories) == ["control", "stimulated", "infected"]
    assert list(two.uns["simulation"]["true_response_lfc_by_perturbation"]) == \
        ["stimulated", "infected"]


def test_infected_is_shared_and_treated_type_specific(three_run):
    adata, shift = three_run
    by_perturbation = adata.uns["simulation"]["true_response_lfc_by_perturbation"]
    infected = off_diagonal(np.corrcoef(by_perturbation["infected"]))
    treated = off_diagonal(np.corrcoef(by_perturbation["treated"]))
    assert infected.min() > 0.9, infected
    assert abs(treated.mean()) < 0.1 and np.abs(treated).max() < 0.35, treated
    # In the counts: the mean shift from control correlates across types for infected only.
    infected = off_diagonal(np.corrcoef(shift["infected"]))
    treated = off_diagonal(np.corrcoef(shift["treated"]))
    assert infected.min() > 0.5 and treated.mean() < 0.2, (infected, treated)
    assert infected.min() > treated.max(), (infected, treated)


@pytest.mark.parametrize("n", [0, 4, 1.5, True])
def test_n_perturbations_out_of_range_is_refused(n):
    with pytest.raises(ValueError, match=r"n_perturbations must be an integer from 1 to 3 "
                                         r"\(stimulated, infected, treated\)"):
        simulate(n_cells=200, n_genes=200, n_perturbations=n)


def test_three_perturbations_round_trip(tmp_path):
    adata = simulate(n_cells=400, n_genes=200, n_cell_types=3, n_perturbations=3)
    write_h5ad(adata, tmp_path / "sim.h5ad")
    back = ad.read_h5ad(tmp_path / "sim.h5ad")
    assert (back.X != adata.X).nnz == 0 and back.obs.equals(adata.obs)
    truth, read = adata.uns["simulation"], back.uns["simulation"]
    assert list(read["perturbations"]) == list(PERTURBATIONS)
    assert list(read["infected_genes"]) == list(truth["infected_genes"])
    for label, lfc in truth["true_response_lfc_by_perturbation"].items():
        np.testing.assert_array_equal(read["true_response_lfc_by_perturbation"][label], lfc)


def test_the_count_model_draws_the_same_counts_in_blocks_of_cells(monkeypatch):
    """Both simulators' counts: made in blocks of cells to bound memory, yet the numbers of one
    draw of the whole matrix."""
    log_rates = np.random.default_rng(0).normal(-4.0, 1.0, size=(50, 40))

    def draw():
        return counts.gamma_poisson_counts(np.random.default_rng(1),
                                           lambda rows: log_rates[rows].copy(), 50, 40,
                                           np.arange(3), 0.1, 500.0, 0.3)

    whole = draw()
    monkeypatch.setattr(counts, "BLOCK_VALUES", 7 * 40)
    blocked = draw()
    assert whole.nnz > 0 and (whole != blocked).nnz == 0
    assert np.array_equal(whole.data, np.round(whole.data))
