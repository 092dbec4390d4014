"""The scGPT-style transformer: tokens, attention masking, transport targets, the transferred
response, residual prediction, learning, determinism, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from pertflow.models import transfer
from pertflow.models import Model, get_model_class
from pertflow.models.transformer import (CellTransformer, bin_expression, expressed_first,
                                         left_out_transfers, pad_batch, transport_targets)
from pertflow.utils import dense

TINY = {"n_layers": 2, "d_model": 32, "n_heads": 2, "n_bins": 11, "max_genes": 64,
        "batch_size": 64, "epochs": 1, "device": "cpu"}


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def held_out(small_sim, keys):
    """Train on everything except one type's perturbed cells; predict that type's controls."""
    group = small_sim.obs[keys.group].cat.categories[0]
    in_group = (small_sim.obs[keys.group] == group).to_numpy()
    perturbed = (small_sim.obs[keys.condition] == keys.perturbed).to_numpy()
    return small_sim[~(in_group & perturbed)].copy(), small_sim[in_group & ~perturbed].copy()


@pytest.fixture(scope="module")
def fitted(held_out, keys):
    train, _ = held_out
    return get_model_class("transformer")(keys).fit(train, TINY, seed=3)


def test_binning_keeps_zeros_and_the_order_of_values():
    cells = sp.csr_matrix(np.array([[0.0, 0.5, 1.0, 2.0, 0.0, 4.0],
                                    [3.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                                    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]))
    bins = dense(bin_expression(cells, n_bins=5))
    # Four distinct non-zero values and four non-zero bins: bin = 1 + rank, zero stays zero.
    assert bins[0].tolist() == [0, 1, 2, 3, 0, 4]
    assert bins[1].tolist() == [4, 0, 0, 0, 0, 0]
    assert bins[2].tolist() == [0] * 6


def test_binning_is_per_cell_so_depth_does_not_change_tokens():
    rng = np.random.default_rng(0)
    cell = rng.gamma(1.0, size=(1, 200)) * (rng.random((1, 200)) < 0.3)
    scaled = np.log1p(np.expm1(cell) * 3.0)  # same cell sequenced three times deeper
    np.testing.assert_array_equal(dense(bin_expression(cell, 51)),
                                  dense(bin_expression(scaled, 51)))
    assert dense(bin_expression(cell, 51)).max() == 50


def test_sequence_round_trip_recovers_the_cell():
    """Short cells are tokenised whole; long ones keep up to half their slots for expressed genes
    and never repeat a gene; the context plus the rest is every gene exactly once."""
    rng = np.random.default_rng(0)
    values = np.array([0.0, 2.0, 0.0, 1.0, 3.0, 0.0, 0.0, 0.5])
    context, rest = expressed_first(values > 0, max_genes=16, rng=rng)
    genes = np.concatenate([context, rest])
    assert sorted(genes.tolist()) == list(range(values.size))
    bins = dense(bin_expression(values[None, :], n_bins=5))[0]
    rebuilt = np.zeros_like(values)
    rebuilt[genes] = bins[genes]
    np.testing.assert_array_equal(np.argsort(rebuilt, kind="stable"),
                                  np.argsort(values, kind="stable"))

    expressed = rng.random(500) < 0.3
    context, rest = expressed_first(expressed, max_genes=64, rng=rng)
    assert context.size == 32 and expressed[context].all()
    assert sorted(np.concatenate([context, rest]).tolist()) == list(range(500))


def tokens(rng, genes):
    """(genes, bins, values, response) tensors for gene indices (batch, length)."""
    return (torch.as_tensor(genes), torch.as_tensor(rng.integers(0, 11, size=genes.shape)),
            torch.as_tensor(rng.gamma(1.0, size=genes.shape).astype(np.float32)),
            torch.as_tensor(rng.normal(size=genes.shape).astype(np.float32)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    net = CellTransformer(n_genes=50, n_bins=11, n_layers=2, d_model=32, n_heads=4,
                          dropout=0.0).eval()
    torch.nn.init.normal_(net.change_head[-1].weight)  # it starts at zero: nothing to compare
    return net


def run(net, context, pad=None, queries=None):
    """(change at the context, change at the queries or None, <cls>)."""
    change, cls, encoded = net.encode(context, pad)
    return change, None if queries is None else net.answer(queries, encoded), cls


def test_padded_context_positions_are_invisible_to_real_ones(net):
    short, long = np.arange(5, 15), np.arange(20, 45)
    genes, pad = pad_batch([short, long])
    pad = torch.as_tensor(pad)
    context = tokens(np.random.default_rng(0), genes)
    queries = tokens(np.random.default_rng(1), np.tile(np.arange(45, 50), (2, 1)))
    with torch.no_grad():
        pred, pred_q, cls = run(net, context, pad, queries)
        alone, alone_q, alone_cls = run(net, tuple(t[:1, :10] for t in context), None,
                                        tuple(t[:1] for t in queries))
        # Junk in the padded slots must not leak into the real positions.
        junk = [t.clone() for t in context]
        for t, filler in zip(junk, (49, 10, 100.0, 100.0)):
            t[pad] = filler
        junk_pred, junk_q, _ = run(net, tuple(junk), pad, queries)
    torch.testing.assert_close(pred[0, :10], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred_q[0], alone_q[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls[0], alone_cls[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(junk_pred[~pad], pred[~pad])
    torch.testing.assert_close(junk_q, pred_q)


def test_queries_never_see_each_other(net):
    """scGPT's generative mask: a query's answer depends on the context and itself only, so any
    chunking of the queries gives the same answers, and the context's own do not depend on
    them."""
    rng = np.random.default_rng(0)
    context = tokens(rng, np.arange(0, 12)[None])
    queries = tokens(rng, np.arange(12, 50)[None])
    with torch.no_grad():
        _, all_q, _ = run(net, context, None, queries)
        parts = [run(net, context, None, tuple(t[:, a:b] for t in queries))[1]
                 for a, b in ((0, 1), (1, 20), (20, 38))]
        one_by_one = [run(net, context, None, tuple(t[:, [i]] for t in queries))[1]
                      for i in (0, 37)]
    torch.testing.assert_close(torch.cat(parts, dim=1), all_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(one_by_one, dim=1), all_q[:, [0, 37]], rtol=1e-5,
                               atol=1e-5)


def test_transport_targets_carry_each_cell_onto_the_perturbed_distribution():
    rng = np.random.default_rng(0)
    controls = rng.gamma(1.0, size=(40, 5)) * (rng.random((40, 5)) < 0.6)
    perturbed = rng.gamma(2.0, size=(25, 5)) + 0.5
    targets = transport_targets(controls, perturbed)
    assert targets.shape == controls.shape
    # The targets' mean is the perturbed mean: the transported cells have the perturbed means.
    np.testing.assert_allclose(targets.mean(0), perturbed.mean(0), rtol=1e-5)
    for gene in range(5):
        # Monotone in the control value, and tied cells (all the zeros) share one target.
        order = np.argsort(controls[:, gene], kind="stable")
        assert np.all(np.diff(targets[order, gene]) >= -1e-6)
        zeros = controls[:, gene] == 0
        assert np.ptp(targets[zeros, gene]) == 0
    # Equal-sized populations with distinct values: each cell goes to the perturbed value of its
    # rank, so cells whose distribution does not change keep their values.
    same = rng.normal(size=(30, 3))
    np.testing.assert_allclose(transport_targets(same, same[::-1]), same, rtol=1e-5)


def test_each_training_group_gets_the_response_of_the_other_groups():
    """Leave-one-group-out: a group's own shift never enters the response it is trained with."""
    means = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    shifts = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    responses = transfer.Responses(["a", "b", "c"], means, shifts, [], [])
    nearest = transfer.Choice("similarity", 0.0, 0.5, 1.0, pd.DataFrame())  # τ = 0, α = 0.5
    out = left_out_transfers(nearest, responses)
    # a's and b's nearest other group is each other; c resembles neither more: a tie, averaged.
    np.testing.assert_allclose(out[0], 0.5 * shifts[1])
    np.testing.assert_allclose(out[1], 0.5 * shifts[0])
    average = transfer.Choice("similarity", None, 1.0, 1.0, pd.DataFrame())
    np.testing.assert_allclose(left_out_transfers(average, responses)[2],
                               shifts[:2].mean(0))


def test_training_loss_decreases(held_out, keys):
    """The network learns the training groups' transport targets beyond the transferred
    response it starts from (its change head starts at zero)."""
    train, _ = held_out
    model = get_model_class("transformer")(keys).fit(train, {**TINY, "epochs": 4, "lr": 3e-3},
                                                     seed=0)
    loss = model.history["loss"].to_numpy()
    assert list(model.history["epoch"]) == list(range(4))
    assert loss[-1] < 0.9 * loss[0]
    assert np.all(loss[1:] < loss[0])


def test_untrained_network_predicts_control_plus_the_baselines_transfer(held_out, keys):
    """The change head starts at zero: each cell's prediction is its own expression plus the
    response similarity_shift adds (clipped at zero), and the transfer is the baseline's."""
    train, control = held_out
    untrained = {**TINY, "epochs": 0}
    model = get_model_class("transformer")(keys).fit(train, untrained, seed=0)
    baseline = get_model_class("similarity_shift")(keys).fit(train, {}, seed=0)
    pred, expected = model.predict(control), baseline.predict(control)
    np.testing.assert_allclose(dense(pred.X), np.maximum(dense(expected.X), 0), atol=1e-5)
    assert model.transfer == baseline.transfer


def test_another_perturbations_cells_train_and_the_splits_own_transfer_predicts(held_out, keys,
                                                                              caplog):
    """With a second perturbation label in training, its groups' controls train too (conditioned
    on their transferred response), while the prediction's transfer stays the split's own."""
    train, control = held_out
    train = train.copy()
    condition = train.obs[keys.condition].astype(str).to_numpy()
    condition[np.flatnonzero(condition == keys.perturbed)[::2]] = "infected"
    train.obs[keys.condition] = condition
    untrained = {**TINY, "epochs": 0}
    with caplog.at_level("INFO"):
        model = get_model_class("transformer")(keys).fit(train, untrained, seed=0)
    one_label = train[train.obs[keys.condition] != "infected"].copy()
    alone = get_model_class("transformer")(keys).fit(one_label, untrained, seed=0)
    # The held-out group (the first) has no perturbed training cells: its controls do not train.
    paired = (train.obs[keys.group] != train.obs[keys.group].cat.categories[0]).to_numpy()
    n_controls = int(((condition == keys.control) & paired).sum())
    assert f"{2 * n_controls} training samples (control cells) under stimulated, infected" \
        in caplog.text
    np.testing.assert_allclose(dense(model.predict(control).X), dense(alone.predict(control).X),
                               atol=1e-5)
    assert model.transfer == alone.transfer


def keeps_cell_to_cell_variation(P: np.ndarray, C: np.ndarray) -> list[bool]:
    """Checks that predicted cells P (rows like their control cells C) keep the controls'
    variation: per-gene SDs like the controls' (not near 0); each predicted cell correlates with
    its own control cell, gene by gene; the change varies far less between cells than they do."""
    varies = C.std(0) > 0
    sd = np.median(C.std(0)[varies])
    r = np.median([np.corrcoef(P[:, j], C[:, j])[0, 1] for j in np.flatnonzero(varies)])
    return [0.8 < np.median(P.std(0)[varies]) / sd < 1.25, r > 0.9,
            np.median((P - C).std(0)[varies]) < 0.5 * sd]


def test_predictions_follow_their_own_control_cell(fitted, held_out):
    _, control = held_out
    P, C = dense(fitted.predict(control).X), dense(control.X)
    assert keeps_cell_to_cell_variation(P, C) == [True, True, True]
    # A collapse to the mean, as the transformer's predictions once were on Kang et al. 2018,
    # fails every check.
    noise = np.random.default_rng(0).normal(size=C.shape) * 0.05 * C.std(0)
    assert keeps_cell_to_cell_variation(P.mean(0) + noise, C) == [False, False, False]


def test_prediction_records_the_transfer(fitted, held_out, keys):
    train, control = held_out
    record = json.loads(fitted.predict(control).uns["pertflow"]["transfer"])
    assert record["method"] == "similarity" and record["space"] == "genes"
    assert 0 <= record["alpha"] <= 1 and "tau" in record
    paired = transfer.paired_groups(train.obs[keys.condition].to_numpy(),
                                    train.obs[keys.group].astype(str).to_numpy(),
                                    keys.control, keys.perturbed)
    assert sorted(record["weights"]) == sorted(paired)
    assert sum(record["weights"].values()) == pytest.approx(1, abs=1e-4)


def test_prediction_covers_every_gene_of_every_control_cell(fitted, held_out, keys):
    _, control = held_out
    pred = fitted.predict(control)
    assert pred.shape == control.shape
    assert (pred.obs[keys.condition] == keys.perturbed).all()
    X = dense(pred.X)
    assert np.isfinite(X).all() and (X >= 0).all()
    assert fitted.embed(control)["X_transformer"].shape == (control.n_obs, TINY["d_model"])


def test_same_seed_same_model_and_other_seed_differs(fitted, held_out, keys):
    train, control = held_out
    again = get_model_class("transformer")(keys).fit(train, TINY, seed=3)
    np.testing.assert_array_equal(dense(fitted.predict(control).X), dense(again.predict(control).X))
    other = get_model_class("transformer")(keys).fit(train, TINY, seed=4)
    assert not np.allclose(dense(fitted.predict(control).X), dense(other.predict(control).X))


def test_save_and_load_give_the_same_predictions(fitted, held_out, tmp_path):
    _, control = held_out
    fitted.save(tmp_path)
    assert {"model.json", "model.pt", "losses.csv", "responses.npz"} <= {
        p.name for p in tmp_path.iterdir()}
    loaded = Model.load(tmp_path)
    pred, again = loaded.predict(control), fitted.predict(control)
    np.testing.assert_array_equal(dense(pred.X), dense(again.X))
    assert pred.uns["pertflow"]["transfer"] == again.uns["pertflow"]["transfer"]
    np.testing.assert_array_equal(loaded.embed(control)["X_transformer"],
                                  fitted.embed(control)["X_transformer"])
    pd.testing.assert_frame_equal(loaded.history, fitted.history)
