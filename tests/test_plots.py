"""Every figure function draws a non-empty image from tiny inputs; the numbers the figures show
(ranks, Leiden ARI) are checked against direct computations."""

from __future__ import annotations

import anndata as ad
import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from pertflow import plots

MODELS = ["control", "mean_shift", "scgen"]
DIRECTIONS = {"r2_mean_all": "higher", "e_distance": "lower", "absent_metric": "higher"}


def assert_drawn(fig, tmp_path, name="figure"):
    """Saved as PNG and PDF; the PNG decodes and is not a blank canvas."""
    png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
    plots.save(fig, [png, pdf])
    image = matplotlib.image.imread(png)
    assert min(image.shape[:2]) > 100 and image[..., :3].std() > 0.05
    assert pdf.stat().st_size > 1000


@pytest.fixture(scope="module")
def held_out(small_sim, keys):
    """One group's control and real perturbed cells, and a prediction: the controls shifted by
    the mean response of the other groups."""
    group = small_sim.obs[keys.group].iloc[0]
    in_group = small_sim.obs[keys.group] == group
    is_control = small_sim.obs[keys.condition] == keys.control
    control = small_sim[in_group & is_control].copy()
    truth = small_sim[in_group & ~is_control].copy()
    others = small_sim[~in_group]
    shift = (others[others.obs[keys.condition] == keys.perturbed].X.mean(axis=0)
             - others[others.obs[keys.condition] == keys.control].X.mean(axis=0))
    pred = ad.AnnData(np.asarray(control.X.toarray() + shift), obs=control.obs.copy(),
                      var=control.var[[]].copy())
    degs = truth.var_names[np.argsort(-(truth.X.mean(axis=0).A1
                                        - control.X.mean(axis=0).A1))][:20].tolist()
    return control, truth, pred, degs


@pytest.fixture
def metrics() -> pd.DataFrame:
    """Two models × two groups × two seeds; scgen is better on r2 in group A only, and on
    e_distance in both groups."""
    rows = []
    for seed in (0, 1):
        rows += [
            ("mean_shift", "A", seed, 0.8, 5.0), ("scgen", "A", seed, 0.9, 4.0),
            ("mean_shift", "B", seed, 0.7, 6.0), ("scgen", "B", seed, 0.5, 3.0),
        ]
    return pd.DataFrame(rows, columns=["model", "group", "seed", "r2_mean_all", "e_distance"])


def test_model_colors_are_stable_and_distinct():
    colors = plots.model_colors(["b", "a", "c"])
    assert colors == plots.model_colors(["c", "a", "b"])
    assert len(set(colors.values())) == 3


@pytest.mark.parametrize("statistic", list(plots.GENE_STATISTICS))
def test_expression_scatter(held_out, tmp_path, statistic):
    control, truth, pred, degs = held_out
    assert_drawn(plots.expression_scatter(pred, truth, degs, "test", statistic), tmp_path)


def test_held_out_umap(held_out, tmp_path):
    control, truth, pred, _ = held_out
    fig = plots.held_out_umap(control, truth, pred, "test", (0.1, 0.2, 0.8, 1.0), seed=0)
    assert_drawn(fig, tmp_path)


def test_top_deg_violins(held_out, tmp_path):
    control, truth, pred, degs = held_out
    # A model named like the control cells (every shipped config has one) gets its own violin.
    preds = {"control": control, "mean_shift": pred, "scgen": pred}
    fig = plots.top_deg_violins(control, truth, preds, degs[:2], plots.model_colors(MODELS),
                                "test")
    assert len([ax for ax in fig.axes if ax.get_title() in degs[:2]]) == 2
    assert len(fig.axes[0].get_xticklabels()) == 2 + len(preds)
    assert_drawn(fig, tmp_path)


def test_r2_bars(metrics, tmp_path):
    assert_drawn(plots.r2_bars(metrics, "r2_mean_all", plots.model_colors(MODELS)), tmp_path)


def test_metric_heatmaps_draw_one_panel_per_present_metric(metrics, tmp_path):
    fig = plots.metric_heatmaps(metrics, DIRECTIONS)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["r2_mean_all (higher is better)", "e_distance (lower is better)"]
    assert_drawn(fig, tmp_path)


def test_mean_ranks_follow_each_metrics_direction(metrics):
    ranks = plots.mean_ranks(metrics, DIRECTIONS)
    # scgen: r2 rank 1 (A) and 2 (B), e_distance rank 1 (A, B) -> 1.25; mean_shift -> 1.75
    assert ranks.to_dict() == {"scgen": 1.25, "mean_shift": 1.75}
    tied = metrics.assign(r2_mean_all=0.5)
    assert plots.mean_ranks(tied, {"r2_mean_all": "higher"}).tolist() == [1.5, 1.5]


def test_ranking_bars(metrics, tmp_path):
    ranks = plots.mean_ranks(metrics, DIRECTIONS)
    assert_drawn(plots.ranking_bars(ranks, plots.model_colors(MODELS), 4), tmp_path)


def test_cost_bars_skip_unmeasured_memory(tmp_path):
    benchmarks = pd.DataFrame({"model": ["mean_shift", "mean_shift", "scgen"],
                               "s": [1.5, 1.7, 45.0], "max_rss": ["160.2", "-", "540.0"]})
    assert_drawn(plots.cost_bars(benchmarks, plots.model_colors(MODELS)), tmp_path)


def separated_latent(seed=0, n=60):
    """Three well-separated Gaussian blobs in 5 dimensions, two conditions within each."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["a", "b", "c"], n)
    centres = {"a": 0.0, "b": 20.0, "c": 40.0}
    latent = rng.normal(size=(3 * n, 5)) + np.array([centres[x] for x in labels])[:, None]
    obs = pd.DataFrame({"cell_type": labels, "condition": np.tile(["control", "stim"], 3 * n // 2)},
                       index=[f"cell{i}" for i in range(3 * n)])
    return obs, latent


def test_leiden_ari_is_one_on_separated_groups_and_seeded():
    obs, latent = separated_latent()
    view = plots.latent_view(obs, latent, seed=0)
    assert plots.leiden_ari(view, "cell_type", seed=0, resolution=0.1) == pytest.approx(1.0)
    shuffled = obs.assign(cell_type=np.random.default_rng(0).permutation(obs["cell_type"]))
    view = plots.latent_view(shuffled, latent, seed=0)
    assert abs(plots.leiden_ari(view, "cell_type", seed=0, resolution=0.1)) < 0.1
    again = plots.latent_view(obs, latent, seed=0)
    assert np.array_equal(again.obsm["X_umap"], plots.latent_view(obs, latent, 0).obsm["X_umap"])


def test_latent_umaps_and_comparison(tmp_path):
    obs, latent = separated_latent()
    adata = ad.AnnData(obs=obs, obsm={"X_latent": latent})
    assert_drawn(plots.latent_umaps(adata, "X_latent", ["cell_type", "condition"]), tmp_path,
                 "umaps")
    fig, aris = plots.latent_comparison(obs, {"batch": latent, "none": latent[:, ::-1]},
                                        "cell_type", "condition", seed=0)
    assert set(aris) == {"batch", "none"} and all(-1 <= a <= 1 for a in aris.values())
    assert sum("Leiden, ARI = " in ax.get_title() for ax in fig.axes) == 2
    assert_drawn(fig, tmp_path, "comparison")
