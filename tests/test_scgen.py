"""scGen: it learns, it is deterministic, it round-trips, its arithmetic is right, and on Kang it
beats doing nothing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pertflow.errors import ConfigError
from pertflow.models import get_model_class
from pertflow.models.scgen import VAE, ArithmeticCheck, decode, latent_delta, lr_factor
from pertflow.models.sparse import SparseRows, as_csr
from pertflow.data.splits import split

# Small and quick: the simulated set has 300 genes, so a narrow network trains in seconds.
FAST = {"n_hidden": 64, "n_latent": 8, "batch_size": 64, "max_epochs": 6, "patience": None,
        "device": "cpu"}


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def parts(small_sim, keys):
    """The split that holds out the first group's perturbed cells."""
    return split(small_sim, keys, sorted(small_sim.obs[keys.group].unique())[0],
                 hide_other_perturbations=False)


@pytest.fixture(scope="module")
def fitted(parts, keys, one_torch_thread):
    """One model with the FAST settings, shared by the tests that only read it (or a copy)."""
    return get_model_class("scgen")(keys).fit(parts["train"], FAST, seed=0)


def with_delta(model, train, **params):
    """A copy of ``model`` with its delta re-chosen under ``params``: the same trained VAE."""
    model = copy.deepcopy(model)
    model.params.update(params)
    model.set_delta(train, np.random.default_rng(0))
    return model


def test_loss_decreases(fitted):
    history = fitted.history
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "arithmetic_r2", "lr",
                                     "seconds"]
    assert len(history) == FAST["max_epochs"]
    assert history.train_loss.iloc[-1] < 0.7 * history.train_loss.iloc[0]
    assert history.val_loss.iloc[-1] < history.val_loss.iloc[0]


def test_same_seed_same_predictions(fitted, parts, keys):
    cls = get_model_class("scgen")
    again, other = (cls(keys).fit(parts["train"], FAST, seed=s).predict(parts["control"]).X
                    for s in (0, 1))
    np.testing.assert_array_equal(fitted.predict(parts["control"]).X, again)
    assert not np.array_equal(again, other)


def test_save_load_round_trip(fitted, parts, tmp_path):
    model, cls = fitted, type(fitted)
    model.save(tmp_path / "scgen")
    assert (tmp_path / "scgen" / "losses.csv").exists()
    loaded = cls.load(tmp_path / "scgen")
    assert loaded.params == model.params
    np.testing.assert_array_equal(loaded.predict(parts["control"]).X,
                                  model.predict(parts["control"]).X)
    np.testing.assert_array_equal(loaded.embed(parts["control"])["X_scgen"],
                                  model.embed(parts["control"])["X_scgen"])
    assert len(loaded.history) == len(model.history)


def test_prediction_and_latent_shapes(fitted, parts, small_sim, keys):
    pred = fitted.predict(parts["control"])
    assert pred.shape == parts["control"].shape
    assert (pred.obs[keys.condition] == keys.perturbed).all()
    assert np.isfinite(pred.X).all()
    assert fitted.embed(small_sim)["X_scgen"].shape == (small_sim.n_obs, FAST["n_latent"])


def test_balancing_and_delta_on_a_hand_made_latent():
    # Group A: 4 control cells at 0, 1 perturbed at 10. Group B: 1 control at 100, 2 perturbed
    # at 104. Balanced, each group weighs the same whatever its size.
    latent = np.array([0, 0, 0, 0, 10, 100, 104, 104], float)[:, None]
    condition = np.array(["c", "c", "c", "c", "p", "c", "p", "p"])
    groups = np.array(["A", "A", "A", "A", "A", "B", "B", "B"])
    rng = np.random.default_rng(0)
    delta = latent_delta(latent, condition, groups, "c", "p", rng)
    # Cells within a group share a value, so resampling cannot move the group means:
    # perturbed (10 + 104) / 2 − control (0 + 100) / 2 = 7, whereas unbalanced it would be 66.
    np.testing.assert_allclose(delta, [7.0])
    only_a = latent_delta(latent, condition, groups, "c", "p", rng, restrict_to=["A"])
    np.testing.assert_allclose(only_a, [10.0])
    with pytest.raises(ConfigError, match=r"no training cells with condition 'p' in groups "
                                          r"among \['C'\]; check restrict_arithmetic_to"):
        latent_delta(latent, condition, groups, "c", "p", rng, restrict_to=["C"])


def test_paired_delta_leaves_out_groups_without_perturbed_cells():
    # As above, plus group C, the held-out one: controls at 1000 and no perturbed cells.
    latent = np.array([0, 0, 0, 0, 10, 100, 104, 104, 1000, 1000], float)[:, None]
    condition = np.array(["c", "c", "c", "c", "p", "c", "p", "p", "c", "c"])
    groups = np.array(["A", "A", "A", "A", "A", "B", "B", "B", "C", "C"])
    rng = np.random.default_rng(0)
    paired = latent_delta(latent, condition, groups, "c", "p", rng, paired=True)
    np.testing.assert_allclose(paired, [7.0])  # the mean of A's and B's shifts
    # The reference's: C's controls join the control mean, (10 + 104) / 2 − (0 + 100 + 1000) / 3
    every = latent_delta(latent, condition, groups, "c", "p", rng)
    np.testing.assert_allclose(every, [57 - 1100 / 3])
    with pytest.raises(ConfigError, match=r"in groups with both conditions among \['C'\]; "
                                          r"check restrict_arithmetic_to \(and delta_groups"):
        latent_delta(latent, condition, groups, "c", "p", rng, restrict_to=["C"], paired=True)


def test_restrict_arithmetic_to_changes_delta(fitted, parts, keys):
    other = sorted(parts["train"].obs[keys.group].unique())[-1]
    full = with_delta(fitted, parts["train"], delta_groups="paired")
    restricted = with_delta(full, parts["train"], restrict_arithmetic_to=[other])
    assert not np.allclose(full.delta, restricted.delta)


def test_sparse_and_dense_input_give_the_same_loss(small_sim):
    X = small_sim.X[:100]
    assert sp.issparse(X)
    torch.manual_seed(0)
    vae = VAE(X.shape[1], 32, 4, 2, 0.2, "batch").eval()
    rows = np.arange(100)
    from_sparse = vae.loss(SparseRows(as_csr(X), rows, torch.device("cpu")), 5e-5, "mse")
    from_dense = vae.loss(SparseRows(as_csr(X.toarray()), rows, torch.device("cpu")), 5e-5, "mse")
    assert from_sparse.item() == pytest.approx(from_dense.item(), rel=1e-6)
    # and the sparse first layer is the dense linear layer
    dense_first = torch.from_numpy(X.toarray()) @ vae.input_layer.weight + vae.input_layer.bias
    sparse_first = vae.input_layer(SparseRows(as_csr(X), rows, torch.device("cpu")))
    torch.testing.assert_close(sparse_first, dense_first, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option", [{"norm": "layer"}, {"norm": "none"}, {"recon_loss": "l1"}])
def test_training_options_train(parts, keys, option):
    model = get_model_class("scgen")(keys).fit(parts["train"], {**FAST, **option,
                                                                "max_epochs": 3}, seed=0)
    assert np.isfinite(model.predict(parts["control"]).X).all()
    assert model.history.train_loss.iloc[-1] < model.history.train_loss.iloc[0]


@pytest.mark.parametrize("option", [{"prediction": "decoded"}, {"delta_groups": "similarity"},
                                    {"delta_groups": "all"}])
def test_prediction_options_predict(fitted, parts, option):
    model = with_delta(fitted, parts["train"], **option)
    assert np.isfinite(model.predict(parts["control"]).X).all()


def test_early_stopping_stops(parts, keys):
    params = {**FAST, "max_epochs": 200, "patience": 1, "min_epochs": 1, "lr": 0.05}
    model = get_model_class("scgen")(keys).fit(parts["train"], params, seed=0)
    assert len(model.history) < 200


def identity_vae(n_genes: int, offset: float = 10.0) -> VAE:
    """A VAE whose encoder mean and decoder are both the identity on non-negative values: every
    linear map is I, and the decoder's hidden layer works on z + offset so LeakyReLU passes it."""
    vae = VAE(n_genes, n_genes, n_genes, 1, 0.0, "none").eval()
    eye = torch.eye(n_genes)
    with torch.no_grad():
        vae.input_layer.weight.copy_(eye)
        vae.input_layer.bias.zero_()
        for linear, bias in ((vae.latent_mean, 0.0), (vae.decoder[0], offset),
                             (vae.decoder[-1], -offset)):
            linear.weight.copy_(eye)
            linear.bias.fill_(bias)
    return vae


def test_arithmetic_check_leaves_each_group_out():
    """With an identity VAE the check is plain gene-space arithmetic, so it can be recomputed:
    each group's controls + the mean shift of the *other* groups, scored on its top genes."""
    rng = np.random.default_rng(0)
    n_genes, groups, condition, rows = 12, [], [], []
    shifts = {"a": 1.0, "b": 2.0, "c": 4.0}
    for group, shift in shifts.items():
        for label, add in (("ctrl", 0.0), ("stim", shift)):
            cells = rng.gamma(2.0, 1.0, size=(20, n_genes))
            cells[:, :4] += add * np.arange(1, 5)  # the response: genes 0-3
            rows.append(cells)
            groups += [group] * 20
            condition += [label] * 20
    X = sp.csr_matrix(np.vstack(rows).astype(np.float32))
    groups, condition = np.array(groups), np.array(condition)
    check = ArithmeticCheck(X, condition, groups, "ctrl", "stim", rng, n_genes=6)
    assert check.usable and len(check.groups) == 3

    dense_X = X.toarray()
    mean = {(g, c): dense_X[(groups == g) & (condition == c)].mean(0)
            for g in shifts for c in ("ctrl", "stim")}
    expected = []
    for group in shifts:
        others = [g for g in shifts if g != group]
        delta = np.mean([mean[g, "stim"] - mean[g, "ctrl"] for g in others], axis=0)
        change = np.abs(mean[group, "stim"] - mean[group, "ctrl"])
        top = np.argsort(-change, kind="stable")[:6]
        predicted, real = (mean[group, "ctrl"] + delta)[top], mean[group, "stim"][top]
        expected.append(np.corrcoef(predicted, real)[0, 1] ** 2)
    score = check(identity_vae(n_genes), X, torch.device("cpu"))
    assert score == pytest.approx(np.mean(expected), rel=1e-4)
    assert score < 0.999  # the groups' responses differ in size, so leaving one out costs


def test_arithmetic_check_needs_two_groups_with_both_conditions(parts, keys, caplog):
    train = parts["train"]
    first = sorted(train.obs[keys.group].unique())[1]
    only_one = train[(train.obs[keys.condition] == keys.control).to_numpy()
                     | (train.obs[keys.group] == first).to_numpy()].copy()
    with caplog.at_level("WARNING"):
        model = get_model_class("scgen")(keys).fit(only_one, FAST, seed=0)
    assert "validation loss is watched instead" in caplog.text
    assert model.history.arithmetic_r2.isna().all()


def test_restore_best_keeps_the_best_arithmetic_epoch(parts, keys):
    train = parts["train"]
    params = {**FAST, "max_epochs": 3, "min_epochs": 1, "lr": 0.02, "lr_schedule": "constant"}
    model = get_model_class("scgen")(keys).fit(train, params, seed=0)
    history = model.history
    assert history.arithmetic_r2.notna().all()
    assert history.arithmetic_r2.idxmax() != len(history) - 1  # else restoring changes nothing
    assert model.kept_epoch == history.epoch[history.arithmetic_r2.idxmax()]
    k = keys
    check = ArithmeticCheck(as_csr(train.X), train.obs[k.condition].to_numpy(),
                            train.obs[k.group].to_numpy(), k.control, k.perturbed,
                            np.random.default_rng(0))
    assert check(model.vae, as_csr(train.X), torch.device("cpu")) == pytest.approx(
        history.arithmetic_r2.max(), abs=1e-6)


def test_cosine_schedule_ends_at_the_final_fraction():
    factors = [lr_factor(e, 10, "cosine", 0.1) for e in range(10)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(factors, factors[1:]))
    assert lr_factor(5, 10, "constant", 0.1) == 1.0


@pytest.mark.parametrize("delta_groups", ["similarity", "transport"])
def test_transferred_deltas_record_their_choice_and_survive_a_round_trip(fitted, parts, keys,
                                                                         delta_groups, tmp_path):
    """The same trained VAE, with the delta re-chosen: the transfer is chosen on the training
    groups only, recorded in the prediction, and what is saved predicts the same."""
    group = parts["control"].obs[keys.group].iloc[0]
    model, cls = with_delta(fitted, parts["train"], delta_groups=delta_groups), type(fitted)
    pred = model.predict(parts["control"])
    record = model.transfer
    assert record["method"] == ("per_cell" if delta_groups == "transport" else "similarity")
    assert record["space"] == "scgen latent" and 0 <= record["alpha"] <= 1
    assert group not in record["weights"] and np.isclose(sum(record["weights"].values()), 1)
    assert "transfer" in pred.uns["pertflow"]
    model.save(tmp_path / "scgen")
    loaded = cls.load(tmp_path / "scgen")
    np.testing.assert_array_equal(loaded.predict(parts["control"]).X, pred.X)
    # back to one delta on the same VAE: no transfer recorded
    model.params["delta_groups"] = "paired"
    model.set_delta(parts["train"], np.random.default_rng(0))
    assert model.transfer is None and "transfer" not in model.predict(parts["control"]).uns[
        "pertflow"]


def test_residual_prediction_adds_the_decoded_change_to_each_cell(fitted, parts):
    model = copy.deepcopy(fitted)
    assert model.params["prediction"] == "residual"  # the default
    model.params |= {"prediction": "decoded", "clip_negative": False}
    decoded = model.predict(parts["control"]).X
    model.params["prediction"] = "residual"
    residual = model.predict(parts["control"]).X
    latent = model.embed(parts["control"])["X_scgen"]
    reconstructed = decode(model.vae, latent, model.device)
    np.testing.assert_allclose(residual, parts["control"].X.toarray() + decoded - reconstructed,
                               rtol=1e-5, atol=1e-5)
    model.params["clip_negative"] = True  # the default: the same, with values below 0 set to 0
    np.testing.assert_array_equal(model.predict(parts["control"]).X, np.maximum(residual, 0))
