"""The Perturb-seq screen library: simulation truth, cell-cycle scoring, effect sizes, responder
calls, the Mixscape-like baseline, latent DE, the input checks and the config checks. Latents are
built from the simulation's truth, so no model is trained here."""

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import cdist

from pertflow.config import check_screens, validate_config
from pertflow.data.preprocess import cell_cycle_genes, preprocess, score_cell_cycle
from pertflow.errors import ConfigError, DataError
from pertflow.screen.analysis import fold_of
from pertflow.screen.checks import check_screen
from pertflow.screen.de import latent_de, wilcoxon_de
from pertflow.screen.effects import _e_distance_permutations, effect_sizes, expression_effects
from pertflow.screen.evaluation import effect_auroc, knn_accuracy, precision_at_k, responder_scores
from pertflow.screen.mixscape import mixscape
from pertflow.screen.responders import call_responders
from pertflow.simulate.screen import DEFAULTS, simulate_screen, truth_genes, truth_table

from conftest import ROOT

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONTROL = DEFAULTS["control"]
SMALL = {"n_cells": 2400, "n_genes": 400, "seed": 1}


@pytest.fixture(scope="module")
def counts():
    return simulate_screen(**SMALL)


@pytest.fixture(scope="module")
def sim(counts):
    return preprocess(counts, qc={"max_mito_fraction": 0.2})


def truth_latent(adata, dims=24, strong=4.0, weak=2.0, seed=0):
    """Noise N(0, I) plus, for a responding cell of an acting knockout, its own orthonormal
    direction times the effect size (in noise sds); also returns the directions."""
    rng = np.random.default_rng(seed)
    truth = truth_table(adata)
    directions = np.linalg.qr(rng.normal(size=(dims, dims)))[0][:len(truth)]
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    latent = rng.normal(size=(adata.n_obs, dims))
    size = truth["effect"].map({"strong": strong, "weak": weak, "none": 0.0})
    for i, name in enumerate(truth.index):
        cells = (labels == name) & ~adata.obs["escaped"].to_numpy()
        latent[cells] += size[name] * directions[i]
    return latent, directions


def test_simulation_is_reproducible_and_its_truth_consistent(counts):
    again = simulate_screen(**SMALL)
    assert (counts.X != again.X).nnz == 0
    assert (counts.X != simulate_screen(**{**SMALL, "seed": SMALL["seed"] + 1}).X).nnz > 0
    assert np.all(counts.X.data == np.round(counts.X.data))
    truth, genes = truth_table(counts), truth_genes(counts)
    p = DEFAULTS
    assert truth["acting"].sum() == p["n_strong"] + p["n_weak"]
    assert set(genes) == set(truth.index[truth["acting"]])
    assert all(len(g) == p["n_programme_genes"] and set(g) <= set(counts.var_names)
               for g in genes.values())
    assert set(cell_cycle_genes()["gene"]) <= set(counts.var_names)
    assert counts.var_names.str.startswith("MT-").sum() == p["n_mito_genes"]
    obs = counts.obs
    assert set(obs["perturbation"].cat.categories) == {CONTROL, *truth.index}
    assert not obs.loc[obs["perturbation"] == CONTROL, "escaped"].any()
    assert set(counts.uns["simulation"]["escaped_cells"]) == set(obs.index[obs["escaped"]])
    assert list(counts.uns["simulation"]["true_phase"]) == list(obs["true_phase"].astype(str))
    # A strong knockout's responders differ from controls on its genes; its escapers do not.
    x = preprocess(counts)
    strong = truth.index[truth["effect"] == "strong"][0]
    cols = x.var_names.get_indexer(genes[strong])
    labels = x.obs["perturbation"].to_numpy()

    def shift(rows):
        return np.abs(x.X[rows][:, cols].mean(0) - x.X[labels == CONTROL][:, cols].mean(0)).mean()

    escaped = x.obs["escaped"].to_numpy()
    assert shift((labels == strong) & ~escaped) > 3 * shift((labels == strong) & escaped)


def test_cell_cycle_scoring_recovers_the_simulated_phase(sim):
    adata = sim.copy()
    score_cell_cycle(adata)
    accuracy = np.mean(adata.obs["phase"].astype(str) == adata.obs["true_phase"].astype(str))
    assert accuracy > 0.85  # chance (always G1) is about 0.5
    assert len(adata.uns["cell_cycle"]["s_genes"]) == 43
    assert len(adata.uns["cell_cycle"]["g2m_genes"]) == 54


def test_cell_cycle_scoring_refuses_counts_and_missing_genes(counts, sim):
    with pytest.raises(DataError, match="log-normalised"):
        score_cell_cycle(counts.copy())
    few = sim[:, ~sim.var_names.isin(cell_cycle_genes()["gene"][5:])].copy()
    with pytest.raises(DataError, match="before HVG selection"):
        score_cell_cycle(few)


def test_e_distance_permutations_match_a_direct_computation():
    rng = np.random.default_rng(0)
    A, B = rng.normal(1.0, 1.0, (30, 4)), rng.normal(size=(50, 4))

    def unbiased(a, b):
        def within(x):
            return cdist(x, x).sum() / (len(x) * (len(x) - 1))
        return 2 * cdist(a, b).mean() - within(a) - within(b)

    observed, null = _e_distance_permutations(A, B, 5, np.random.default_rng(1))
    assert observed == pytest.approx(unbiased(A, B))
    pooled = np.vstack([A, B])
    picks = np.argsort(np.random.default_rng(1).random((5, 80)), axis=1)[:, :30]
    for value, pick in zip(null, picks):
        rest = np.setdiff1d(np.arange(80), pick)
        assert value == pytest.approx(unbiased(pooled[pick], pooled[rest]))


def test_effect_size_ranks_acting_targets_and_null_p_values_are_not_significant(sim):
    latent, _ = truth_latent(sim)
    labels = sim.obs["perturbation"].astype(str).to_numpy()
    effects = effect_sizes(latent, labels, CONTROL, n_permutations=300, max_cells=300)
    truth = truth_table(sim).loc[effects.index]
    assert effect_auroc(effects["e_distance"], truth["acting"]) >= 0.95
    by_effect = effects.groupby(truth["effect"])["e_distance"].mean()
    assert by_effect["strong"] > by_effect["weak"] > by_effect["none"]
    assert abs(by_effect["none"]) < 0.15 * by_effect["weak"]  # unbiased: about 0 for no effect
    assert (effects.loc[truth["effect"] == "strong", "p_value"] < 0.01).all()
    assert (effects.loc[truth["effect"] == "weak", "p_value"] < 0.05).mean() >= 0.75
    assert (effects.loc[~truth["acting"], "q_value"] > 0.05).all()
    # Many null perturbations: permutation p-values about uniform.
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(3000, 5))
    fake = np.where(np.arange(3000) < 600, CONTROL, [f"N{i % 40}" for i in range(3000)])
    p = effect_sizes(noise, fake, CONTROL, n_permutations=200)["p_value"]
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert np.mean(p < 0.05) < 0.2


def test_folds_split_every_label_evenly_and_reproducibly():
    labels = np.repeat(["a", "b", "c"], [7, 10, 3])
    fold = fold_of(labels, 2, seed=4)
    for label in "abc":
        counts = np.bincount(fold[labels == label], minlength=2)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(fold, fold_of(labels, 2, seed=4))
    assert not np.array_equal(fold, fold_of(labels, 2, seed=5))


def test_cross_fitted_effects_compare_each_fold_with_its_own_controls(sim):
    """Folds embedded by different models live in different spaces: here fold 1 is the truth
    latent moved far away. Within folds the effects are as without the move; pooled across
    folds, every perturbation would look different from the controls."""
    latent, _ = truth_latent(sim)
    labels = sim.obs["perturbation"].astype(str).to_numpy()
    fold = fold_of(labels, 2, seed=0)
    moved = latent + 6.0 * (fold == 1)[:, None]
    truth = truth_table(sim)
    effects = effect_sizes(moved, labels, CONTROL, n_permutations=200, folds=fold)
    assert effect_auroc(effects["e_distance"], truth["acting"]) >= 0.95
    assert (effects.loc[truth.index[~truth["acting"]], "q_value"] > 0.05).all()
    # The statistic is the mean of the folds' E-distances, each fold's cells against its own.
    name = truth.index[truth["effect"] == "strong"][0]
    by_fold = [effect_sizes(moved[fold == f], labels[fold == f], CONTROL,
                            perturbations=[name], n_permutations=10,
                            max_cells=10_000).loc[name, "e_distance"] for f in (0, 1)]
    whole = effect_sizes(moved, labels, CONTROL, perturbations=[name], n_permutations=10,
                         max_cells=20_000, folds=fold)
    assert whole.loc[name, "e_distance"] == pytest.approx(np.mean(by_fold))
    calls = call_responders(moved, labels, CONTROL, folds=fold)
    strong = truth.index[truth["effect"] == "strong"]
    scores = responder_scores(calls["responder"], sim.obs["escaped"], labels, strong)
    assert scores["accuracy"] > 0.9
    with pytest.raises(DataError, match="fewer than 2 cells in each of the 2 folds"):
        effect_sizes(latent, labels, CONTROL, n_permutations=10,
                     folds=(labels == CONTROL) * 1)


def test_expression_statistic_finds_acting_targets_without_a_model(sim):
    labels = sim.obs["perturbation"].astype(str).to_numpy()
    truth = truth_table(sim)
    effects = expression_effects(sim.X, labels, CONTROL, n_permutations=200)
    truth = truth.loc[effects.index]
    assert effect_auroc(effects["t2"], truth["acting"]) >= 0.85
    strong_or_null = truth["effect"] != "weak"
    assert effect_auroc(effects.loc[strong_or_null, "t2"],
                        truth.loc[strong_or_null, "acting"]) == 1.0
    assert (effects.loc[truth["effect"] == "strong", "q_value"] < 0.05).all()
    assert (effects.loc[~truth["acting"], "q_value"] > 0.05).all()
    # About 1 and uniform p-values without any effect.
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(1200, 50))
    fake = np.where(np.arange(1200) < 300, CONTROL, [f"N{i % 20}" for i in range(1200)])
    null = expression_effects(noise, fake, CONTROL, n_permutations=200)
    assert 0.9 < null["t2"].mean() < 1.15
    assert stats.kstest(null["p_value"], "uniform").pvalue > 0.01


def test_responder_calls_recover_escapers(sim):
    latent, _ = truth_latent(sim)
    labels = sim.obs["perturbation"].astype(str).to_numpy()
    truth = truth_table(sim)
    calls = call_responders(latent, labels, CONTROL)
    assert len(calls) == sim.n_obs and not calls.loc[labels == CONTROL, "responder"].any()
    strong = truth.index[truth["effect"] == "strong"]
    scores = responder_scores(calls["responder"], sim.obs["escaped"], labels, strong)
    assert scores["accuracy"] > 0.9 and scores["escaper_recall"] > 0.8
    acting = truth.index[truth["acting"]]
    assert responder_scores(calls["responder"], sim.obs["escaped"], labels,
                            acting)["accuracy"] > 0.8
    gated = call_responders(latent, labels, CONTROL, significant=list(strong))
    assert not gated.loc[~np.isin(labels, strong), "responder"].any()


def test_mixscape_baseline_separates_responders_of_strong_targets(sim):
    adata = sim.copy()
    mixscape(adata, "perturbation", CONTROL, split_by="batch")
    assert adata.layers["X_pert"].shape == adata.shape
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    truth = truth_table(adata)
    cls = adata.obs["mixscape_class_global"].astype(str).to_numpy()
    assert (cls[labels == CONTROL] == CONTROL).all()
    strong = truth.index[truth["effect"] == "strong"]
    scores = responder_scores(cls == "KO", adata.obs["escaped"], labels, strong)
    assert scores["accuracy"] > 0.85
    null = np.isin(labels, truth.index[~truth["acting"]])
    assert np.mean(cls[null] == "NP") > 0.9


def test_latent_de_with_a_linear_decoder_recovers_the_true_genes(sim):
    salient, directions = truth_latent(sim)
    labels = sim.obs["perturbation"].astype(str).to_numpy()
    rng = np.random.default_rng(1)
    truth, genes = truth_table(sim), truth_genes(sim)
    # Salient direction i decodes to knockout i's programme; background to anything else.
    W_salient = np.zeros((salient.shape[1], sim.n_vars))
    for i, name in enumerate(truth.index):
        if name in genes:
            W_salient[i, sim.var_names.get_indexer(genes[name])] = rng.choice([-1, 1], 20)
    W_salient = directions.T @ W_salient
    W_background = rng.normal(size=(5, sim.n_vars))

    def decode(background, salient_latent, rows):
        assert len(rows) == len(background)
        return 1.0 + background @ W_background + salient_latent @ W_salient

    samples = 4
    background = rng.normal(size=(samples, sim.n_obs, 5))
    posterior = salient[None] + 0.3 * rng.normal(size=(samples, *salient.shape))
    de = latent_de(decode, background, posterior, labels, CONTROL, sim.var_names, max_cells=100)
    assert set(de["perturbation"]) == set(truth.index)
    assert (de["lower"] <= de["score"] + 1e-9).all() and (de["score"] <= de["upper"] + 1e-9).all()
    latent_p20 = precision_at_k(de, genes, k=20)
    assert (latent_p20 >= 0.9).all()
    strong = truth.index[truth["effect"] == "strong"]
    wilcoxon = wilcoxon_de(sim, "perturbation", CONTROL, perturbations=list(strong))
    assert {"perturbation", "gene", "score", "pval_adj", "rank"} <= set(wilcoxon.columns)
    assert precision_at_k(wilcoxon, {k: genes[k] for k in strong}).mean() > 0.5


def test_knn_accuracy_tells_informative_from_uninformative_latents(sim):
    latent, _ = truth_latent(sim, strong=8.0, weak=8.0)
    truth = truth_table(sim)
    labels = sim.obs["perturbation"].astype(str)
    responding = np.isin(labels, truth.index[truth["acting"]]) & ~sim.obs["escaped"].to_numpy()
    informative = knn_accuracy(latent[responding], labels[responding])
    assert informative["accuracy"] > 0.9
    noise = knn_accuracy(np.random.default_rng(0).normal(size=latent.shape), labels)
    assert noise["accuracy"] < noise["chance"] + 0.05


def test_check_screen_accepts_a_good_screen_and_drops_small_perturbations(counts):
    kept = check_screen(counts, "perturbation", CONTROL, covariates=["batch"], min_cells=1)
    assert sorted(kept) == sorted(truth_table(counts).index)
    n = counts.obs["perturbation"].value_counts()
    kept = check_screen(counts, "perturbation", CONTROL, covariates=[],
                        min_cells=int(n.drop(CONTROL).median()) + 1)
    assert 0 < len(kept) < len(n) - 1


def _relabel(adata, column, mask, value):
    adata = adata.copy()
    adata.obs[column] = adata.obs[column].astype(str)
    adata.obs.loc[mask, column] = value
    return adata


@pytest.mark.parametrize("case, match", [
    ("no_control", "no control cells"),
    ("twin_control", "equal the control label"),
    ("control_listed", "among the perturbations"),
    ("missing_covariate", "covariate column 'lane'"),
    ("covariate_in_one_perturbation", "covariate 'batch' category 'lane9'"),
    ("not_integer", "not integer"),
    ("few_controls_in_a_batch", r"only 5 control cells \('non-targeting'\) in batch category "
                                r"'batch2'; the Mixscape-like baseline needs more than 20"),
])
def test_check_screen_bad_input(counts, case, match):
    adata, kwargs = counts, {}
    labels = counts.obs["perturbation"].astype(str)
    if case == "no_control":
        adata = _relabel(counts, "perturbation", labels == CONTROL, "KO01")
    elif case == "twin_control":
        adata = _relabel(counts, "perturbation", (labels == CONTROL).to_numpy()
                         & (np.arange(counts.n_obs) % 2 == 0), "Non-Targeting ")
    elif case == "control_listed":
        kwargs = {"perturbations": ["KO01", CONTROL]}
    elif case == "missing_covariate":
        kwargs = {"covariates": ["lane"]}
    elif case == "few_controls_in_a_batch":
        in_batch = ((labels == CONTROL) & (counts.obs["batch"] == "batch2")).to_numpy()
        adata = _relabel(counts, "perturbation", in_batch & (np.cumsum(in_batch) > 5), "KO01")
        kwargs = {"covariates": ["batch"]}
    elif case == "covariate_in_one_perturbation":
        adata = _relabel(counts, "batch", (labels == "KO02").to_numpy(), "lane9")
        kwargs = {"covariates": ["batch"]}
    elif case == "not_integer":
        adata = counts.copy()
        adata.X = adata.X * 0.5
    with pytest.raises(DataError, match=match):
        check_screen(adata, "perturbation", CONTROL,
                     **{"covariates": [], "min_cells": 1, **kwargs})


def screen_config(**entry) -> dict:
    """A config of one screen, validated (schema defaults filled in) as the workflow reads it."""
    config = {"screens": {"s": {"source": {"simulate": {}}, "perturbation_key": "perturbation",
                                "control": CONTROL, **entry}}}
    validate_config(config, SCHEMA)
    return config


def test_screen_defaults_are_the_schemas():
    spec = screen_config()["screens"]["s"]
    assert {k: spec[k] for k in ("covariates", "min_cells", "counts", "n_folds")} \
        == {"covariates": [], "min_cells": 20, "counts": "X", "n_folds": 2}
    assert spec["hvg"] == {"n_top_genes": None, "flavor": "seurat_v3"}
    assert spec["params"] == {"classifier_weight": 1.0, "wasserstein_penalty": 1.0}
    config = screen_config(params={"max_epochs": 3, "classifier_weight": 0.0})
    assert config["screens"]["s"]["params"] == {"max_epochs": 3, "classifier_weight": 0.0,
                                                "wasserstein_penalty": 1.0}
    check_screens(config)


@pytest.mark.parametrize("entry, match", [
    ({"params": {"max_epoch": 3}},
     r"config screens\.s\.params: unknown parameter\(s\) \['max_epoch'\] for model "
     r"'contrastivevi'\. Known parameters: .*max_epochs.*Fix the spelling"),
    ({"params": {"classifier_key": "batch"}},
     r"config screens\.s\.params\.classifier_key: set from the screen's `perturbation_key:`"),
    ({"covariates": ["batch"], "params": {"salient_transfer": "similarity"}},
     r"config screens\.s\.params\.salient_transfer: 'similarity' is not allowed"),
    ({"covariates": ["perturbation"]},
     r"config screens\.s\.covariates: lists the perturbation_key"),
    ({"perturbation_key": "screen_fold"}, "'screen_fold' has the name of a column the analysis"),
])
def test_a_bad_screen_entry_fails_when_the_config_is_read(entry, match):
    with pytest.raises(ConfigError, match=match):
        check_screens(screen_config(**entry))


def test_a_screen_named_like_a_dataset_fails_when_the_config_is_read():
    config = {**screen_config(), "datasets": {"s": {}}}
    with pytest.raises(ConfigError, match="a dataset is also named 's' and both write results/s/"):
        check_screens(config)
