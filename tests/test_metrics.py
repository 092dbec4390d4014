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
    assert {m for m, d in metrics.METRICS.items() if d == "lower"} == {"e_distance", "mmd"}
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
    assert set(good) == {*metrics.METRICS, "n_pred", "n_truth"}
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
