"""contrastiveVI (Pyro): learning, recovery of the simulated truth, determinism, persistence and
clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import silhouette_score
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from pertflow.errors import DataError
from pertflow.models import Model, get_model_class

# Short runs: the KL weight reaches 1 after 20 of 60 epochs instead of scvi-tools' 400.
TRAINED = {"max_epochs": 60, "kl_warmup_epochs": 20, "wasserstein_penalty": 1.0}
TINY = {"max_epochs": 2, "n_hidden": 32, "batch_size": 64}


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def fit(adata, keys, params, seed=0):
    return get_model_class("contrastivevi")(keys).fit(adata, params, seed=seed)


@pytest.fixture(scope="module")
def trained(small_sim, keys):
    return fit(small_sim, keys, TRAINED)


@pytest.fixture(scope="module")
def latents(trained, small_sim):
    return trained.embed(small_sim)


def stimulated(adata, keys) -> np.ndarray:
    return (adata.obs[keys.condition] == keys.perturbed).to_numpy()


def test_elbo_improves(trained):
    history = trained.history
    assert len(history) == TRAINED["max_epochs"]
    assert history["validation_loss"].iloc[-1] < 0.8 * history["validation_loss"].iloc[0]
    assert history["train_loss"].iloc[-5:].mean() < history["train_loss"].iloc[:5].mean()


def test_embedding_covers_every_cell(latents, small_sim):
    assert latents["X_background"].shape == (small_sim.n_obs, 10)
    assert latents["X_salient"].shape == (small_sim.n_obs, 10)
    assert all(np.isfinite(x).all() for x in latents.values())


def test_salient_space_separates_condition_better_than_background(latents, small_sim, keys):
    condition = stimulated(small_sim, keys)

    def separation(space):
        knn = KNeighborsClassifier(n_neighbors=15)
        return (silhouette_score(latents[space], condition),
                cross_val_score(knn, latents[space], condition, cv=3).mean())

    salient_silhouette, salient_knn = separation("X_salient")
    background_silhouette, background_knn = separation("X_background")
    assert salient_silhouette > background_silhouette + 0.1
    assert salient_knn > background_knn


def test_background_space_keeps_cell_type(latents, small_sim, keys):
    knn = KNeighborsClassifier(n_neighbors=15)
    accuracy = cross_val_score(knn, latents["X_background"], small_sim.obs[keys.group], cv=3)
    assert accuracy.mean() > 0.9


def test_control_salient_means_near_zero_with_penalty(latents, small_sim, keys):
    norms = np.linalg.norm(latents["X_salient"], axis=1)
    condition = stimulated(small_sim, keys)
    assert norms[~condition].mean() < 0.35 * norms[condition].mean()


def test_prediction_moves_controls_towards_the_response(trained, small_sim, keys):
    is_group = (small_sim.obs[keys.group] == small_sim.obs[keys.group].iloc[0]).to_numpy()
    condition = stimulated(small_sim, keys)
    controls = small_sim[is_group & ~condition]
    pred = trained.predict(controls)
    assert pred.shape == controls.shape
    assert (pred.obs[keys.condition] == keys.perturbed).all()
    assert list(pred.obs["source_cell"]) == list(controls.obs_names)
    assert np.isfinite(pred.X).all() and (pred.X >= 0).all()
    # X is log1p(counts normalised to 1e4): each predicted cell sums back to 1e4.
    np.testing.assert_allclose(np.expm1(pred.X.astype(np.float64)).sum(axis=1), 1e4, rtol=1e-3)
    interferon = small_sim.var_names.str.startswith("ISG")
    control_level = np.asarray(controls.X[:, interferon].mean())
    stimulated_level = np.asarray(small_sim[is_group & condition].X[:, interferon].mean())
    assert control_level < pred.X[:, interferon].mean()
    assert abs(pred.X[:, interferon].mean() - stimulated_level) < \
        abs(control_level - stimulated_level)


def test_sampled_prediction_is_seeded_and_on_X_scale(trained, small_sim, keys, monkeypatch):
    monkeypatch.setitem(trained.params, "prediction", "sampled")
    condition = stimulated(small_sim, keys)
    controls = small_sim[~condition]
    rng_state = torch.get_rng_state()
    pred = trained.predict(controls).X
    assert torch.equal(torch.get_rng_state(), rng_state)
    np.testing.assert_array_equal(pred, trained.predict(controls).X)
    np.testing.assert_allclose(np.expm1(pred.astype(np.float64)).sum(axis=1), 1e4, rtol=1e-3)
    # Sampled like X, per-gene means track the real stimulated cells' means closely.
    truth = np.asarray(small_sim[condition].X.mean(axis=0)).ravel()
    assert np.corrcoef(pred.mean(axis=0), truth)[0, 1] > 0.95


def test_deterministic_per_seed(small_sim, keys):
    first = fit(small_sim, keys, TINY, seed=3).embed(small_sim)["X_salient"]
    again = fit(small_sim, keys, TINY, seed=3).embed(small_sim)["X_salient"]
    other = fit(small_sim, keys, TINY, seed=4).embed(small_sim)["X_salient"]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_save_and_load_round_trip(trained, small_sim, keys, tmp_path):
    trained.save(tmp_path)
    losses = pd.read_csv(tmp_path / "losses.csv")
    assert len(losses) == TRAINED["max_epochs"] and "validation_loss" in losses
    loaded = Model.load(tmp_path)
    assert loaded.params == trained.params and loaded.seed == trained.seed
    cells = small_sim[:50]
    np.testing.assert_allclose(loaded.predict(cells).X, trained.predict(cells).X, rtol=1e-6)
    np.testing.assert_allclose(loaded.embed(cells)["X_salient"],
                               trained.embed(cells)["X_salient"], rtol=1e-6)
    # Both evaluate with the learned dispersion (unit dispersion would be outside the tolerance).
    heldout = trained.evaluate(small_sim)["loss"]
    assert heldout == pytest.approx(trained.history["validation_loss"].iloc[-1], rel=0.05)
    assert loaded.evaluate(small_sim)["loss"] == pytest.approx(heldout, rel=0.005)


def test_two_models_in_one_process_keep_their_parameters(trained, small_sim, keys):
    before = trained.predict(small_sim[:20]).X
    fit(small_sim, keys, TINY, seed=1)
    np.testing.assert_array_equal(trained.predict(small_sim[:20]).X, before)


@pytest.mark.parametrize("options", [
    {"library": "latent"},
    {"elbo": "trace", "classifier_weight": 1.0},
    {"covariates": ["donor"], "n_layers": 2},
])
def test_options_train(small_sim, keys, options):
    model = fit(small_sim, keys, {**TINY, **options})
    assert model.history["train_loss"].notna().all()
    assert np.isfinite(model.predict(small_sim[:20]).X).all()


def test_non_integer_counts_are_refused(small_sim, keys):
    bad = small_sim.copy()
    bad.layers["counts"] = bad.layers["counts"] * 0.5
    with pytest.raises(DataError, match=r"layers\['counts'\].*not integer"):
        fit(bad, keys, TINY)


def test_missing_counts_layer_is_refused(small_sim, keys):
    bad = small_sim.copy()
    del bad.layers["counts"]
    with pytest.raises(DataError, match=r"layers\['counts'\] is missing.*`counts:` key"):
        fit(bad, keys, TINY)


def test_no_control_cells_is_refused(small_sim, keys):
    only_stimulated = small_sim[stimulated(small_sim, keys)].copy()
    with pytest.raises(DataError, match=rf"no cells labelled '{keys.control}' in "
                                        r"obs\['condition'\] \(it holds 'stimulated'\).*"
                                        r"`control` and `perturbed`.*`condition_key`"):
        fit(only_stimulated, keys, TINY)


def test_missing_covariate_is_refused(small_sim, keys):
    with pytest.raises(DataError, match=r"obs\['batch'\] is missing"):
        fit(small_sim, keys, {**TINY, "covariates": ["batch"]})


@pytest.mark.parametrize("how", ["similarity", "transport"])
def test_salient_transfer_records_its_choice_and_survives_a_round_trip(small_sim, keys, how,
                                                                       tmp_path):
    group = small_sim.obs[keys.group].cat.categories[0]
    in_group = (small_sim.obs[keys.group] == group).to_numpy()
    train = small_sim[~(in_group & stimulated(small_sim, keys))].copy()
    controls = small_sim[in_group & ~stimulated(small_sim, keys)]
    model = fit(train, keys, {**TINY, "max_epochs": 5, "salient_transfer": how})
    pred = model.predict(controls)
    record = model.transfer
    assert record["method"] == ("per_cell" if how == "transport" else "similarity")
    assert group not in record["weights"] and np.isclose(sum(record["weights"].values()), 1)
    assert "transfer" in pred.uns["pertflow"] and np.isfinite(pred.X).all()
    model.save(tmp_path / "m")
    np.testing.assert_allclose(Model.load(tmp_path / "m").predict(controls).X, pred.X, rtol=1e-6)


@pytest.mark.parametrize("options", [
    {},
    {"wasserstein_penalty": 1.0, "classifier_weight": 1.0},
    {"elbo": "trace", "library": "latent", "covariates": ["donor"], "n_layers": 2},
    {"classifier_weight": 2.0, "classifier_key": "cell_type", "wasserstein_penalty": 1.0},
    {"classifier_weight": 1.0, "classifier_key": "cell_type", "elbo": "trace"},
])
def test_fast_loss_equals_pyro_elbo_on_a_fixed_batch(small_sim, keys, options):
    """Training's hand-written loss (sparse counts, no Pyro traces) is Pyro's TraceMeanField_ELBO
    (Trace_ELBO) loss on the model and guide, penalty factors included, with the same draws from
    the same random state; so are its gradients, and so is the held-out ELBO."""
    import pyro
    from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

    from pertflow.models.contrastivevi.training import heldout_losses

    model = get_model_class("contrastivevi")(keys)
    model.params = model.check_params({**TINY, **options})
    model.seed = 0
    cells, split, _ = model.prepare(small_sim)  # fit's set-up: the cells and the network
    network = model.network
    assert network.classifier is None or network.classifier.out_features == max(
        len(model.label_categories), 1)
    control, perturbed = split.control[:40], split.perturbed[:50]
    totals = (400, 700)  # the plates scale each group up to these
    elbo = TraceMeanField_ELBO() if model.params["elbo"] == "meanfield" else Trace_ELBO()
    parameters = dict(network.named_parameters())

    def loss_and_grads(fast: bool, kl_weight: float = 0.3):
        torch.manual_seed(11)
        if fast:
            loss, _ = network.loss(cells.sparse_batch(control, perturbed, *totals), kl_weight)
        else:
            loss = elbo.differentiable_loss(network.model, network.guide,
                                            cells.dense_batch(control, perturbed, *totals),
                                            kl_weight)
        dispersion = network.inverse_dispersion().unconstrained()
        grads = torch.autograd.grad(loss, [*parameters.values(), dispersion])
        return float(loss.detach()), grads

    with pyro.get_param_store().scope():
        network.train()  # dropout on: its masks are drawn from the same random state
        plain, plain_grads = loss_and_grads(fast=False)
        fast, fast_grads = loss_and_grads(fast=True)
        assert fast == pytest.approx(plain, rel=1e-5)
        # Float rounding only: e.g. the first layers' biases, whose gradient batch norm cancels
        # to rounding noise, differ on that noise's scale, not on their own.
        largest = max(float(g.abs().max()) for g in plain_grads)
        for name, g_plain, g_fast in zip([*parameters, "inverse_dispersion"], plain_grads,
                                         fast_grads):
            torch.testing.assert_close(g_fast, g_plain, rtol=1e-3, atol=1e-5 * largest,
                                       msg=lambda m: f"{name}: {m}")
        assert not torch.equal(plain_grads[0], torch.zeros_like(plain_grads[0]))

        # The per-epoch held-out ELBO by the fast path equals the one through Pyro.
        torch.manual_seed(5)
        by_pyro = heldout_losses(network, cells, control, perturbed, by_pyro=True)
        torch.manual_seed(5)
        by_fast = heldout_losses(network, cells, control, perturbed)
        for name in ("loss", "reconstruction_loss"):
            assert by_fast[name] == pytest.approx(by_pyro[name], rel=1e-5)


def test_sparse_encoder_equals_dense(trained, small_sim):
    """The encoders' first layer on sparse rows gives the dense layer's output."""
    cells = trained.cells(small_sim[:100])
    rows = np.arange(100)
    network = trained.network.eval()
    sparse = cells.sparse_batch(rows, rows[:0], 100, 0)
    dense_batch = cells.dense_batch(rows, rows[:0], 100, 0)
    with torch.no_grad():
        for encoder in (network.background_encoder, network.salient_encoder):
            for a, b in zip(encoder(sparse.expression, sparse.covariates),
                            encoder(dense_batch.normalised, dense_batch.covariates)):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_fused_optimiser_makes_pyros_clipped_adam_update():
    """One fused Adam over every parameter makes pyro.optim.ClippedAdam's update (elementwise
    clamp, L2 weight decay, Pyro's eps placement) to float rounding."""
    from pyro.optim.clipped_adam import ClippedAdam

    from pertflow.models.contrastivevi.training import FusedClippedAdam

    generator = torch.Generator().manual_seed(0)
    shapes = [(30, 7), (7,), (1,)]
    start = [torch.randn(shape, generator=generator) for shape in shapes]
    ours = [x.clone().requires_grad_() for x in start]
    pyros = [x.clone().requires_grad_() for x in start]
    settings = {"lr": 1e-2, "eps": 0.01, "weight_decay": 1e-3, "clip_norm": 1.0}
    fused, reference = FusedClippedAdam(ours, **settings), ClippedAdam(pyros, **settings)
    for _ in range(30):
        grads = [3 * torch.randn(shape, generator=generator) for shape in shapes]  # clamps
        for params, optimiser in ((ours, fused), (pyros, reference)):
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            optimiser.step()
    for a, b, x in zip(ours, pyros, start):
        assert not torch.equal(b, x)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sparse_zinb_log_likelihood_equals_pyros_distribution():
    """The likelihood as training computes it (every gene as if zero, corrected at the non-zero
    counts, hand-written gradient) against Pyro's ZeroInflatedNegativeBinomial, far from the
    typical values too: large and small means, gates and dispersions, counts up to 500."""
    import pyro.distributions as dist
    import scipy.sparse as sp

    from pertflow.models.contrastivevi.module import zinb_log_likelihood
    from pertflow.models.contrastivevi.training import Cells

    generator = torch.Generator().manual_seed(1)
    n_cells, n_genes = 12, 40
    counts = torch.poisson(torch.rand(n_cells, n_genes, generator=generator) ** 4 * 30)
    counts[0, :5] = torch.tensor([1.0, 2.0, 100.0, 500.0, 0.0])
    counts[:, 0] += 1  # no empty cell
    cells = Cells(sp.csr_matrix(counts.numpy()), np.zeros((n_cells, 0), np.float32), None,
                  torch.device("cpu"))
    batch = cells.sparse_batch(np.arange(5), np.arange(5, n_cells), 5, n_cells - 5)
    inputs = [8 * torch.randn(n_cells, n_genes, generator=generator),  # logits of proportions
              6 * torch.randn(n_cells, n_genes, generator=generator),  # gate logits
              7 + torch.randn(n_cells, generator=generator),  # log library
              torch.exp(3 * torch.randn(n_genes, generator=generator))]  # inverse dispersion
    inputs = [x.requires_grad_() for x in inputs]

    def by_pyro(proportion_logits, gate_logits, log_library, r):
        log_proportions = proportion_logits.log_softmax(-1)
        return dist.ZeroInflatedNegativeBinomial(
            total_count=r, logits=log_library.unsqueeze(-1) + log_proportions - r.log(),
            gate_logits=gate_logits).log_prob(counts).sum(-1)

    def by_training(proportion_logits, gate_logits, log_library, r):
        return zinb_log_likelihood(batch, log_library, proportion_logits.log_softmax(-1),
                                   gate_logits, r)

    weights = torch.rand(n_cells, generator=generator)  # a gradient other than all ones
    results = []
    for function in (by_pyro, by_training):
        values = function(*inputs)
        results.append((values, torch.autograd.grad((values * weights).sum(), inputs)))
    (expected, expected_grads), (got, got_grads) = results
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)
    for g_got, g_expected in zip(got_grads, expected_grads):
        torch.testing.assert_close(g_got, g_expected, rtol=1e-4, atol=1e-4)


def test_screen_training_with_a_label_classifier_samples_and_decodes(small_sim, keys, tmp_path):
    """A screen's use: every cell trained on, a multi-class classifier of a label column
    (controls a class), posterior samples of both latents and decoding with the cells'
    covariates; all survive a save and load."""
    params = {**TINY, "classifier_weight": 1.0, "classifier_key": "cell_type",
              "covariates": ["donor"]}
    model = fit(small_sim, keys, params)
    classes = sorted(small_sim.obs["cell_type"].astype(str).unique())
    assert model.network.classifier.out_features == len(classes)
    means = model.embed(small_sim)
    assert np.abs(means["X_salient"]).sum(1).min() > 0  # controls' encoder output, not 0
    samples = model.sample_latents(small_sim[:30], n_samples=4, seed=3)
    assert samples["background"].shape == (4, 30, model.network.n_background)
    assert samples["salient"].shape == (4, 30, model.network.n_salient)
    np.testing.assert_array_equal(model.sample_latents(small_sim[:30], 4, seed=3)["salient"],
                                  samples["salient"])
    assert samples["salient"].std(0).mean() > 0
    decoded = model.decode(means["X_background"][:30], means["X_salient"][:30], small_sim[:30])
    assert decoded.shape == (30, small_sim.n_vars) and np.all(decoded >= 0)
    # On X's scale: per-cell totals of expm1 are the normalisation target.
    np.testing.assert_allclose(np.expm1(decoded).sum(1), 1e4, rtol=1e-3)
    with pytest.raises(ValueError, match="covariates"):
        model.decode(means["X_background"][:3], means["X_salient"][:3])
    model.save(tmp_path / "m")
    loaded = Model.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.decode(means["X_background"][:30],
                                             means["X_salient"][:30], small_sim[:30]),
                               decoded, rtol=1e-5)
