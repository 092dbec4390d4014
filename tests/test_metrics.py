import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pertflow.benchmark import metrics


@pytest.fixture
def populations():
    rng = np.random.default_rng(0)
    return rng.gamma(2.0, 1.0, (50, 40)), rng.gamma(2.0, 1.0, (60, 40)), rng.gamma(2, 1, (30, 40))


def test_r2_mean_is_squared_pearson_of_means(populations):
    pred, truth, _ = populations
    expected = stats.pearsonr(pred.mean(0), truth.mean(0))[0] ** 2
    assert metrics.r2_mean(pred, truth) == pytest.approx(expected)
    assert metrics.r2_mean(truth, truth) == pytest.approx(1.0)


def test_r2_var_and_pearson_delta(populations):
    pred, truth, control = populations
    assert metrics.r2_var(pred, truth) == pytest.approx(
        stats.pearsonr(pred.var(0), truth.var(0))[0] ** 2)
    ref = control.mean(0)
    assert metrics.pearson_delta(pred, truth, ref) == pytest.approx(
        np.corrcoef(pred.mean(0) - ref, truth.mean(0) - ref)[0, 1])


def test_top_degs_finds_the_shifted_genes():
    rng = np.random.default_rng(1)
    control = rng.normal(1.0, 0.3, (80, 30)).clip(0)
    truth = control.copy()
    truth[:, [3, 7]] += 2.0
    names = [f"g{i}" for i in range(30)]
    degs = metrics.top_degs(ad.AnnData(truth, var=pd.DataFrame(index=names)),
                            ad.AnnData(control, var=pd.DataFrame(index=names)), n=2)
    assert set(degs["names"]) == {"g3", "g7"}


def test_score_uses_truth_gene_order(populations):
    pred, truth, control = populations
    genes = [f"g{i}" for i in range(40)]
    P = ad.AnnData(pred, var=pd.DataFrame(index=genes))[:, genes[::-1]].copy()
    T, C = ad.AnnData(truth, var=pd.DataFrame(index=genes)), ad.AnnData(control, var=pd.DataFrame(index=genes))
    reference = truth[:20].mean(0)
    result = metrics.score(P, T, C, genes[:10], reference, seed=0)
    assert result["r2_mean_all"] == pytest.approx(metrics.r2_mean(pred, truth))
    assert result["r2_mean_top100"] == pytest.approx(metrics.r2_mean(pred[:, :10], truth[:, :10]))
    assert result["pearson_delta_perturbed"] == pytest.approx(
        metrics.pearson_delta(pred, truth, reference))
    assert result["direction_accuracy_top100"] == pytest.approx(
        metrics.direction_accuracy(pred[:, :10], truth[:, :10], control[:, :10]))


def test_metric_names_and_directions():
    assert list(metrics.METRICS)[:2] == ["r2_mean_all", "r2_mean_top100"]
    assert {m for m, d in metrics.METRICS.items() if d == "lower"} == {
        "e_distance", "e_distance_unbiased", "mmd"}
    assert metrics.RUN_METRICS == [m for m in metrics.METRICS if m != "discrimination"]
    # the verdict's E-distance is the unbiased one; the V-statistic stays in the tables
    assert "e_distance" not in metrics.VERDICT_METRICS
    assert "e_distance_unbiased" in metrics.VERDICT_METRICS
    assert set(metrics.METRICS.values()) == {"higher", "lower"}


def test_e_distance_matches_the_pairwise_definition():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(0, 1, (5, 3)), rng.normal(1, 1, (4, 3))

    def mean_distance(A, B):
        return np.mean([np.linalg.norm(a - b) for a in A for b in B])

    expected = 2 * mean_distance(X, Y) - mean_distance(X, X) - mean_distance(Y, Y)
    assert metrics.e_distance(X, Y) == pytest.approx(expected)
    assert metrics.e_distance(X, X) == pytest.approx(0.0, abs=1e-12)
    assert metrics.e_distance(X, Y + 5) > metrics.e_distance(X, Y)


def test_mmd_matches_the_kernel_definition_and_median_bandwidth():
    rng = np.random.default_rng(3)
    X, Y = rng.normal(0, 1, (5, 3)), rng.normal(1, 1, (4, 3))
    both = np.vstack([X, Y])
    pairs = [np.linalg.norm(both[i] - both[j]) for i in range(9) for j in range(i + 1, 9)]
    bandwidth = metrics.median_bandwidth(X, Y)
    assert bandwidth == pytest.approx(np.median(pairs))

    def kernel_mean(A, B):
        return np.mean([np.exp(-np.sum((a - b) ** 2) / (2 * bandwidth**2)) for a in A for b in B])

    expected = kernel_mean(X, X) + kernel_mean(Y, Y) - 2 * kernel_mean(X, Y)
    assert metrics.mmd(X, Y, bandwidth) == pytest.approx(expected)
    assert metrics.mmd(X, X, bandwidth) == pytest.approx(0.0, abs=1e-12)


def test_deg_overlap_and_direction_accuracy():
    assert metrics.deg_overlap(["a", "b", "x", "y"], ["a", "b", "c", "d"]) == 0.5
    control = np.array([[1.0, 1.0, 1.0, 1.0]] * 2)
    truth = np.array([[2.0, 0.0, 2.0, 0.0]] * 2)
    pred = np.array([[3.0, 0.5, 0.0, 1.0]] * 2)  # right, right, wrong, no change (wrong)
    assert metrics.direction_accuracy(pred, truth, control) == 0.5


def test_pearson_delta_against_a_perturbed_reference(populations):
    pred, truth, control = populations
    reference = truth[:10].mean(0)
    assert metrics.pearson_delta(pred, truth, reference) == pytest.approx(
        stats.pearsonr(pred.mean(0) - reference, truth.mean(0) - reference)[0])


def test_r2_of_is_the_squared_pearson_correlation():
    rng = np.random.default_rng(5)
    x = rng.normal(size=50)
    y = 2 * x + rng.normal(size=50)
    assert metrics.r2_of(x, y) == pytest.approx(stats.pearsonr(x, y)[0] ** 2)
    assert metrics.r2_of(x, 3 * x + 1) == pytest.approx(1.0)


def test_subsample_is_seeded_and_bounded():
    X = np.arange(20.0).reshape(10, 2)
    first = metrics.subsample(X, 4, np.random.default_rng(0))
    assert first.shape == (4, 2)
    np.testing.assert_array_equal(first, metrics.subsample(X, 4, np.random.default_rng(0)))
    assert metrics.subsample(X, 20, np.random.default_rng(0)) is X


def test_score_ranks_a_shifted_prediction_above_the_control(keys):
    rng = np.random.default_rng(5)
    genes = [f"g{i}" for i in range(30)]
    control = rng.normal(1.0, 0.3, (80, 30)).clip(0)
    truth = rng.normal(1.0, 0.3, (70, 30)).clip(0)
    truth[:, :5] += 2.0
    var = pd.DataFrame(index=genes)
    T, C = ad.AnnData(truth, var=var), ad.AnnData(control, var=var)
    degs = metrics.top_degs(T, C, n=5)["names"].tolist()
    shifted = control + (truth.mean(0) - control.mean(0))
    reference = control.mean(0) + 1.0
    good = metrics.score(ad.AnnData(shifted, var=var), T, C, degs, reference, seed=0, max_cells=50)
    bad = metrics.score(C.copy(), T, C, degs, reference, seed=0, max_cells=50)
    assert set(good) == {*metrics.RUN_METRICS, "n_pred", "n_truth"}
    assert good["e_distance"] < bad["e_distance"] and good["mmd"] < bad["mmd"]
    assert good["deg_overlap_top100"] == 1.0 and good["direction_accuracy_top100"] == 1.0
    assert bad["direction_accuracy_top100"] == 0.0 and bad["deg_overlap_top100"] == 0.0
    assert good == metrics.score(ad.AnnData(shifted, var=var), T, C, degs, reference, seed=0,
                                 max_cells=50)


def test_no_change_prediction_has_nan_pearson_delta_without_a_warning(populations):
    """The `control` model returns the held-out controls: its change is 0 everywhere, so
    Pearson-delta is undefined; the NaN is expected and no warning is printed for it."""
    import warnings

    _, truth, control = populations
    genes = [f"g{i}" for i in range(40)]
    T, C = (ad.AnnData(x, var=pd.DataFrame(index=genes)) for x in (truth, control))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(metrics.pearson_delta(control, truth, control.mean(0)))
        result = metrics.score(C.copy(), T, C, genes[:10], truth[:20].mean(0), seed=0)
    assert np.isnan(result["pearson_delta"])
    assert np.isfinite(result["pearson_delta_perturbed"])


def test_e_distance_unbiased_matches_the_pairwise_definition_without_self_pairs():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(0, 1, (5, 3)), rng.normal(1, 1, (4, 3))

    def mean_distance(A, B, distinct=False):
        return np.mean([np.linalg.norm(a - b) for i, a in enumerate(A) for j, b in enumerate(B)
                        if not (distinct and i == j)])

    expected = 2 * mean_distance(X, Y) - mean_distance(X, X, True) - mean_distance(Y, Y, True)
    assert metrics.e_distance_unbiased(X, Y) == pytest.approx(expected)
    assert np.isnan(metrics.e_distance_unbiased(X[:1], Y))


def test_e_distance_u_statistic_is_unbiased_at_unequal_sizes_and_the_v_statistic_is_not():
    """Two samples of one distribution, 6 and 40 cells: over many draws the U-statistic's mean
    is 0 within its standard error, the V-statistic's far above it."""
    rng = np.random.default_rng(11)
    u, v = [], []
    for _ in range(400):
        X, Y = rng.normal(0, 1, (6, 5)), rng.normal(0, 1, (40, 5))
        u.append(metrics.e_distance_unbiased(X, Y))
        v.append(metrics.e_distance(X, Y))
    u, v = np.array(u), np.array(v)
    assert abs(u.mean()) < 3 * u.std(ddof=1) / np.sqrt(len(u))
    assert v.mean() > 20 * v.std(ddof=1) / np.sqrt(len(v))
    # a real difference still shows
    assert metrics.e_distance_unbiased(rng.normal(0, 1, (30, 5)), rng.normal(2, 1, (30, 5))) > 1


def test_r2_delta_weighted():
    control = np.zeros((3, 4))
    truth = np.tile([1.0, 2.0, 3.0, 0.0], (3, 1))
    weights = metrics.deg_weights(np.array([2.0, 1.0, 1.0, -5.0]))
    np.testing.assert_allclose(weights, [0.5, 0.25, 0.25, 0.0])
    assert metrics.r2_delta_weighted(truth, truth, control, weights) == pytest.approx(1.0)
    # only the weighted genes count: the last gene's error weighs nothing
    wrong_last = truth + np.array([0, 0, 0, 9.0])
    assert metrics.r2_delta_weighted(wrong_last, truth, control, weights) == pytest.approx(1.0)
    # a prediction of no change: 1 - Σw Δ² / Σw (Δ - Δ̄)²
    mean = 0.5 * 1 + 0.25 * 2 + 0.25 * 3
    expected = 1 - (0.5 + 0.25 * 4 + 0.25 * 9) / (
        0.5 * (1 - mean) ** 2 + 0.25 * (2 - mean) ** 2 + 0.25 * (3 - mean) ** 2)
    assert metrics.r2_delta_weighted(control, truth, control, weights) == pytest.approx(expected)
    np.testing.assert_allclose(metrics.deg_weights(np.array([-1.0, -2.0])), [0.5, 0.5])


def shifted_population(rng, n, genes=30):
    X = rng.normal(1.0, 0.5, (n, genes)).clip(0)
    X[:, :6] += np.linspace(0.5, 2.0, 6)
    return X


def test_ceiling_calibrates_the_truths_other_half_to_one_and_control_to_zero():
    """A prediction that is another sample of the truth's own distribution, of a half's size,
    scores 1 calibrated on average; the held-out control (`control`) scores exactly 0."""
    genes = [f"g{i}" for i in range(30)]
    var = pd.DataFrame(index=genes)
    calibrated, anchors = [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        C = ad.AnnData(rng.normal(1.0, 0.5, (120, 30)).clip(0), var=var)
        T = ad.AnnData(shifted_population(rng, 120), var=var)
        other = ad.AnnData(shifted_population(rng, 60), var=var)
        reference = C.X.mean(0) + 0.5
        columns, centroids, reason = metrics.ceiling(other, T, C, reference, 10, seed, 10)
        assert reason is None and centroids["half_a"].shape == (30,)
        calibrated.append({m: columns[metrics.calibrated_column(m)]
                           for m in metrics.RUN_METRICS})
        columns, _, _ = metrics.ceiling(C.copy(), T, C, reference, 10, seed, 10)
        anchors.append({m: columns[metrics.calibrated_column(m)] for m in metrics.RUN_METRICS})
    calibrated, anchors = pd.DataFrame(calibrated), pd.DataFrame(anchors)
    for metric in ["r2_mean_all", "r2_mean_top100", "pearson_delta", "e_distance_unbiased",
                   "deg_overlap_top100", "direction_accuracy_top100", "r2_delta_deg_weighted"]:
        values = calibrated[metric]
        assert abs(values.mean() - 1) < max(0.1, 3 * values.std(ddof=1) / np.sqrt(len(values))), \
            (metric, values.tolist())
    # 0 exactly, or NaN where the ceiling is not better than the control (here the variances,
    # which the simulated response barely changes)
    assert ((anchors == 0) | anchors.isna()).all().all(), anchors
    assert (anchors.drop(columns=["r2_var_all", "r2_var_top100"]) == 0).all().all(), anchors
    # the ceiling of the unbiased E-distance is near 0, of the V-statistic clearly above
    columns, _, _ = metrics.ceiling(other, T, C, reference, 10, 0, 10)
    assert abs(columns["e_distance_unbiased_ceiling"]) < 0.25 * columns["e_distance_ceiling"]


def test_too_few_perturbed_cells_get_no_ceiling_and_a_reason():
    rng = np.random.default_rng(3)
    genes = [f"g{i}" for i in range(30)]
    var = pd.DataFrame(index=genes)
    C = ad.AnnData(rng.normal(1.0, 0.5, (40, 30)).clip(0), var=var)
    T = ad.AnnData(shifted_population(rng, 19), var=var)
    columns, centroids, reason = metrics.ceiling(T.copy(), T, C, C.X.mean(0), 10, 0, 10)
    assert "19 perturbed cells, fewer than 2 × min_cells (20)" in reason
    assert all(np.isnan(v) for v in columns.values())
    assert set(columns) == {c for m in metrics.RUN_METRICS for c in
                            (metrics.ceiling_column(m), metrics.calibrated_column(m))}
    assert centroids["half_a"] is None and centroids["truth"].shape == (30,)


def test_discrimination_is_one_for_the_truth_and_chance_when_the_group_is_ignored():
    rng = np.random.default_rng(4)
    truths = {g: rng.normal(0, 1, 20) for g in "ABCDE"}
    assert all(metrics.discrimination(truths[g], truths, g) == 1.0 for g in truths)
    # one prediction for every group, whatever the group: on average chance (0.5)
    ignoring = []
    for _ in range(200):
        truths = {g: rng.normal(0, 1, 20) for g in "ABCDE"}
        shared = rng.normal(0, 1, 20)
        ignoring += [metrics.discrimination(shared, truths, g) for g in truths]
    assert np.mean(ignoring) == pytest.approx(0.5, abs=0.03)
    assert np.isnan(metrics.discrimination(truths["A"], {"A": truths["A"]}, "A"))
    # equidistant: a tie counts half
    assert metrics.discrimination(np.zeros(2), {"A": np.ones(2), "B": -np.ones(2)}, "A") == 0.5
