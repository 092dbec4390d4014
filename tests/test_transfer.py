"""Transferring the responses of similar training groups: the weights, the inner choice of τ / k
and α, the per-cell transport, and the baselines built on them."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pertflow.models import transfer
from pertflow.errors import DataError
from pertflow.keys import Keys
from pertflow.models import get_model_class
from pertflow.data.preprocess import preprocess
from pertflow.simulate.experiment import simulate
from pertflow.data.splits import split
from pertflow.utils import dense

KEYS = Keys("condition", "ctrl", "stim", "group")
# The synthetic clusters are not on the expression scale: keep predictions below 0.
RAW = {"clip_negative": False}


def test_similarities_are_centred_cosines_and_weights_span_nearest_to_average():
    means = np.array([[1.0, 0, 0, 5], [0, 1.0, 0, 5], [0, 0, 1.0, 5]])
    sim = transfer.similarities(means, np.array([0.9, 0.1, 0, 5]))
    # centred on the groups' mean, group 0 alone points the target's way
    assert sim.argmax() == 0 and sim[0] > 0.9 and sim[1] < 0.5 and sim[2] < 0
    assert np.array_equal(transfer.similarity_weights(sim, 0.0), [1, 0, 0])
    assert np.allclose(transfer.similarity_weights(sim, None), 1 / 3)
    w = transfer.similarity_weights(sim, 0.1)
    assert np.isclose(w.sum(), 1) and np.allclose(w[1] / w[0], np.exp((sim[1] - sim[0]) / 0.1))
    # the shared profile (last gene) alone does not make groups alike: a constant target
    assert np.allclose(transfer.similarities(means, means.mean(0)), 0)


def clusters(transferable: bool, n_cells: int = 40, seed: int = 0) -> ad.AnnData:
    """Six groups in two lineages (control states close within a lineage). ``transferable``: the
    groups of a lineage share their response; else every group's response is its own."""
    rng = np.random.default_rng(seed)
    n_genes = 200
    lineage_state = rng.normal(0, 3, (2, n_genes))
    lineage_response = rng.normal(0, 2, (2, n_genes))
    rows, obs = [], []
    for g in range(6):
        state = lineage_state[g % 2] + rng.normal(0, 0.5, n_genes)
        response = lineage_response[g % 2] if transferable else rng.normal(0, 2, n_genes)
        for condition, shift in (("ctrl", 0), ("stim", response)):
            rows.append(state + shift + rng.normal(0, 0.3, (n_cells, n_genes)))
            obs += [(condition, f"g{g}")] * n_cells
    obs = pd.DataFrame(obs, columns=["condition", "group"])
    obs.index = obs.index.astype(str)
    return ad.AnnData(np.vstack(rows).astype(np.float32), obs=obs)


def test_inner_choice_picks_nearest_when_responses_transfer_and_alpha_zero_when_not():
    for transferable in (True, False):
        adata = clusters(transferable)
        model = get_model_class("similarity_shift")(KEYS).fit(adata, {}, seed=0)
        if transferable:  # the same-lineage groups carry the response, the others blur it
            # (τ up to 0.2 already puts > 99% of the weight on a lineage here)
            assert model.transfer["tau"] is not None and model.transfer["tau"] <= 0.2
            assert model.transfer["alpha"] >= 0.9
            average = model.choice.scores.loc["average"].max()
            assert model.transfer["inner_score"] > average + 0.2
        else:
            assert model.transfer["alpha"] <= 0.1


def test_similarity_shift_weights_the_resembling_groups_and_records_them():
    adata = clusters(True)
    train = adata[~((adata.obs["group"] == "g0") & (adata.obs["condition"] == "stim"))].copy()
    control = adata[(adata.obs["group"] == "g0") & (adata.obs["condition"] == "ctrl")]
    model = get_model_class("similarity_shift")(KEYS).fit(train, RAW, seed=0)
    pred = model.predict(control)
    record = pred.uns["pertflow"]["transfer"]
    weights = model.transfer["weights"]
    assert '"method": "similarity"' in record and set(weights) == {f"g{i}" for i in range(1, 6)}
    assert weights["g2"] + weights["g4"] > 0.99  # g0's lineage
    truth = dense(adata[(adata.obs["group"] == "g0") & (adata.obs["condition"] == "stim")].X)
    error = np.abs(pred.X.mean(0) - truth.mean(0)).mean()
    average = get_model_class("mean_shift")(KEYS).fit(train, {"balanced": True, **RAW}, seed=0)
    assert error < 0.5 * np.abs(average.predict(control).X.mean(0) - truth.mean(0)).mean()


def test_transport_recovers_a_known_pairing():
    rng = np.random.default_rng(0)
    controls = rng.normal(0, 10, (6, 3))
    moves = rng.normal(0, 0.1, (6, 3))  # small against the distances between cells
    order = rng.permutation(6)
    responses = transfer.Responses(["a"], controls.mean(0)[None], moves.mean(0)[None],
                                   [controls], [(controls + moves)[order]])
    transfer.transport(responses)
    assert np.allclose(responses.deltas[0], moves)


def test_neighbour_deltas_weight_the_most_similar_cells_by_cosine():
    bank = np.array([[1.0, 0], [0, 1.0], [1.0, 1.0]])
    deltas = np.array([[10.0, 0], [0, 10.0], [5.0, 5.0]])
    found = transfer.neighbour_deltas(np.array([[1.0, 0.1]]), bank, deltas, (1, 2))
    assert np.allclose(found[1][0], [[10, 0]])
    sims = np.array([1, 1 / np.sqrt(2)]) * np.array([1.0, 1.1]) / np.linalg.norm([1, 0.1])
    w = sims / sims.sum()
    assert np.allclose(found[2][0], w[0] * deltas[0] + w[1] * deltas[2])
    assert np.isclose(found[2][1].sum(), 1)


@pytest.mark.parametrize("name", ["similarity_shift", "transport_shift"])
def test_truth_never_reaches_fit_or_predict(name, small_sim, keys):
    """Predictions are the same whatever the held-out group's perturbed cells hold."""
    group = small_sim.obs[keys.group].cat.categories[0]
    scrambled = small_sim.copy()
    truth = ((scrambled.obs[keys.group] == group)
             & (scrambled.obs[keys.condition] == keys.perturbed)).to_numpy()
    X = dense(scrambled.X).copy()
    X[truth] = np.random.default_rng(0).random((truth.sum(), X.shape[1])) * 9
    scrambled.X = X.astype(np.float32)
    predictions = []
    for data in (small_sim, scrambled):
        parts = split(data, keys, group, hide_other_perturbations=False)
        model = get_model_class(name)(keys).fit(parts["train"], {}, seed=0)
        predictions.append(dense(model.predict(parts["control"]).X))
    assert np.allclose(*predictions, atol=1e-5)


@pytest.mark.parametrize("name, params", [("similarity_shift", {}),
                                          ("similarity_shift", {"space": "pca"}),
                                          ("transport_shift", {})])
def test_transfer_baselines_save_and_load(name, params, small_sim, keys, tmp_path):
    model = get_model_class(name)(keys).fit(small_sim, params, seed=1)
    model.save(tmp_path / "m")
    loaded = get_model_class(name).load(tmp_path / "m")
    assert loaded.transfer["alpha"] == model.transfer["alpha"]
    assert np.array_equal(model.predict(small_sim[:20]).X, loaded.predict(small_sim[:20]).X)
    assert (tmp_path / "m" / "transfer_scores.csv").exists()


def test_no_group_with_both_conditions_fails_naming_the_groups():
    adata = clusters(True)
    one_sided = adata[((adata.obs["group"] == "g0") & (adata.obs["condition"] == "ctrl"))
                      | ((adata.obs["group"] == "g1") & (adata.obs["condition"] == "stim"))].copy()
    with pytest.raises(DataError, match=r"no training group has cells of both 'ctrl' and 'stim'.*"
                                        r"'g0': \['ctrl'\]"):
        get_model_class("similarity_shift")(KEYS).fit(one_sided, {}, seed=0)


def test_one_paired_group_falls_back_to_its_response_and_says_so(caplog):
    adata = clusters(True)
    keep = (adata.obs["group"] == "g0") | (adata.obs["condition"] == "ctrl")
    with caplog.at_level("WARNING"):
        model = get_model_class("transport_shift")(KEYS).fit(adata[keep].copy(), {}, seed=0)
    assert "only one training group (g0)" in caplog.text
    assert model.transfer["method"] == "average" and model.transfer["alpha"] == 1.0


def alphas_and_gains(response_sharing: str) -> tuple[list[float], list[float]]:
    """Per held-out type of a small simulation: similarity_shift's chosen α, and its R² of the
    top changed genes' means minus that of unchanged controls."""
    adata = preprocess(simulate(n_cells=1500, n_genes=400, n_cell_types=5,
                                response_sharing=response_sharing, seed=2))
    keys = Keys("condition", "control", "stimulated", "cell_type")
    alphas, gains = [], []
    for group in adata.obs["cell_type"].cat.categories:
        parts = split(adata, keys, group, hide_other_perturbations=False)
        truth, control = dense(parts["truth"].X).mean(0), dense(parts["control"].X)
        top = np.argsort(-np.abs(truth - control.mean(0)))[:100]
        model = get_model_class("similarity_shift")(keys).fit(parts["train"], {}, seed=0)
        predicted = dense(model.predict(parts["control"]).X).mean(0)
        r2 = [np.corrcoef(x[top], truth[top])[0, 1] ** 2 for x in (predicted, control.mean(0))]
        alphas.append(model.transfer["alpha"])
        gains.append(r2[0] - r2[1])
    return alphas, gains


def test_independent_responses_shrink_alpha_and_stay_near_control():
    """Where groups respond independently, the chosen α shrinks and the prediction is not worse
    than unchanged controls; where lineages share responses, the transfer is kept and helps.
    (Independent responses still share a little on the log-normalised scale: size
    normalisation moves every other gene when some go up, so α need not reach 0.)"""
    alphas, gains = alphas_and_gains("independent")
    assert np.mean(alphas) <= 0.5 and np.mean(gains) > -0.02, (alphas, gains)
    alphas, gains = alphas_and_gains("lineage")
    assert np.mean(alphas) >= 0.8 and np.mean(gains) > 0.2, (alphas, gains)
