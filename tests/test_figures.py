"""Every figure function draws what it is for (its panels, bars, labelled genes and legend, read
back from the matplotlib figure) and saves a non-blank PNG and a PDF; the numbers the figures show
(ranks, Leiden ARI) are checked against direct computations."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import matplotlib.image
import matplotlib.text
import numpy as np
import pandas as pd
import pytest

from pertflow.benchmark import figure_inputs, figures
from pertflow.benchmark.metrics import leiden_ari, r2_of

MODELS = ["control", "mean_shift", "scgen"]
DIRECTIONS = {"r2_mean_all": "higher", "e_distance": "lower", "absent_metric": "higher"}


def assert_drawn(fig, tmp_path, name="figure"):
    """Saved as PNG and PDF; the PNG decodes and is not a blank canvas."""
    png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
    figures.save(fig, [png, pdf])
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
    colors = figures.model_colors(["b", "a", "c"])
    assert colors == figures.model_colors(["c", "a", "b"])
    assert len(set(colors.values())) == 3


def bars(ax) -> list:
    """The bars of ``ax`` (its rectangles), left to right."""
    return sorted(ax.patches, key=lambda bar: bar.get_x())


def points(ax) -> int:
    return sum(len(collection.get_offsets()) for collection in ax.collections)


@pytest.mark.parametrize("statistic", list(figures.GENE_STATISTICS))
def test_expression_scatter(held_out, tmp_path, statistic):
    """One point per gene (the top DEGs again in red), the top ten DEGs labelled, and the R² of
    all genes and of the DEGs written on the axes."""
    control, truth, pred, degs = held_out
    fig = figures.expression_scatter(pred, truth, degs, "test", statistic)
    ax = fig.axes[0]
    every, top = ax.collections
    assert len(every.get_offsets()) == truth.n_vars and len(top.get_offsets()) == len(degs)
    labels = [a for a in ax.texts if isinstance(a, matplotlib.text.Annotation)]
    assert [a.get_text() for a in labels] == degs[:10]  # nothing crowded here: all placed
    assert_labels_apart(fig, labels)
    f = figures.GENE_STATISTICS[statistic]
    x, y = f(truth.X.toarray(), axis=0), f(np.asarray(pred[:, truth.var_names].X), axis=0)
    assert f"R² all = {r2_of(x, y):.3f}" in "".join(t.get_text() for t in ax.texts)
    assert ax.get_xlabel() == f"real {statistic} expression"
    assert_drawn(fig, tmp_path)


def test_held_out_umap(held_out, tmp_path):
    """Every control, real and predicted cell is a point, and the legend names the three."""
    control, truth, pred, _ = held_out
    fig = figures.held_out_umap(control, truth, pred, "test", (0.1, 0.2, 0.8, 1.0), seed=0)
    ax = fig.axes[0]
    assert points(ax) == control.n_obs + truth.n_obs + pred.n_obs
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "control", "real perturbed", "predicted"]
    assert ax.get_title() == "test"
    assert_drawn(fig, tmp_path)


def test_top_deg_violins(held_out, tmp_path):
    control, truth, pred, degs = held_out
    # A model named like the control cells (every shipped config has one) gets its own violin.
    preds = {"control": control, "mean_shift": pred, "scgen": pred}
    fig = figures.top_deg_violins(control, truth, preds, degs[:2], figures.model_colors(MODELS),
                                "test")
    assert len([ax for ax in fig.axes if ax.get_title() in degs[:2]]) == 2
    assert len(fig.axes[0].get_xticklabels()) == 2 + len(preds)
    assert_drawn(fig, tmp_path)


def test_r2_bars(metrics, tmp_path):
    """One bar per group and model at the mean over seeds, a dot per seed, a legend of models."""
    fig = figures.r2_bars(metrics, "r2_mean_all", figures.model_colors(MODELS))
    ax = fig.axes[0]
    # groups A, B on the x axis; models mean_shift, scgen side by side within each
    assert [round(bar.get_height(), 6) for bar in bars(ax)] == [0.8, 0.9, 0.7, 0.5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mean_shift", "scgen"]
    assert points(ax) == len(metrics)
    assert_drawn(fig, tmp_path)


@pytest.fixture
def two_perturbations(metrics) -> pd.DataFrame:
    """The table of ``metrics`` under "stimulated", and again under "infected" with scgen worse
    and a group C only that perturbation holds out: group A and B are split under both."""
    infected = metrics.assign(perturbation="infected",
                              r2_mean_all=metrics["r2_mean_all"] - 0.3)
    extra = infected[infected["group"] == "A"].assign(group="C")
    return pd.concat([metrics.assign(perturbation="stimulated"), infected, extra],
                     ignore_index=True)


def test_r2_bars_one_row_per_perturbation(two_perturbations, tmp_path):
    """A row of axes per perturbation, titled with it, each with its own held-out groups, one y
    scale, and the legend of models on the first row only."""
    fig = figures.r2_bars(two_perturbations, "r2_mean_all", figures.model_colors(MODELS))
    assert [ax.get_title() for ax in fig.axes] == ["infected", "stimulated"]
    infected, stimulated = fig.axes
    assert [t.get_text() for t in infected.get_xticklabels()] == ["A", "B", "C"]
    assert [t.get_text() for t in stimulated.get_xticklabels()] == ["A", "B"]
    assert [round(bar.get_height(), 6) for bar in bars(stimulated)] == [0.8, 0.9, 0.7, 0.5]
    assert [round(bar.get_height(), 6) for bar in bars(infected)] == [0.5, 0.6, 0.4, 0.2, 0.5,
                                                                     0.6]
    assert points(infected) + points(stimulated) == len(two_perturbations)
    assert infected.get_ylim() == stimulated.get_ylim()
    assert [t.get_text() for t in infected.get_legend().get_texts()] == ["mean_shift", "scgen"]
    assert stimulated.get_legend() is None
    assert_drawn(fig, tmp_path)


def figure_of(fig) -> list:
    """What an R² bar figure shows: its size, and per axes the title, ticks, bars, dots and
    legend."""
    return [tuple(fig.get_size_inches())] + [
        (ax.get_title(), [t.get_text() for t in ax.get_xticklabels()],
         [(bar.get_x(), bar.get_height(), bar.get_facecolor()) for bar in bars(ax)],
         points(ax), ax.get_ylim(), ax.get_ylabel(),
         [t.get_text() for t in ax.get_legend().get_texts()]) for ax in fig.axes]


def test_r2_bars_of_one_perturbation_are_as_without_the_column(metrics):
    """A perturbation column of one label changes nothing: one axes, untitled."""
    colors = figures.model_colors(MODELS)
    before = figure_of(figures.r2_bars(metrics, "r2_mean_all", colors))
    after = figure_of(figures.r2_bars(metrics.assign(perturbation="stimulated"), "r2_mean_all",
                                    colors))
    assert after == before and len(after) == 2 and after[1][0] == ""


def test_heatmaps_and_ranks_of_several_perturbations_are_per_split(two_perturbations,
                                                                  metrics):
    """Columns perturbation/group; the ranks over every split (a group held out under two
    perturbations is two scores); one perturbation labelled and ranked as before."""
    fig = figures.metric_heatmaps(two_perturbations, DIRECTIONS)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "infected/A", "infected/B", "infected/C", "stimulated/A", "stimulated/B"]
    # scgen's r2 ranks 1, 2, 1, 1, 2 (C is A again), e_distance 1 everywhere: 12 / 10 = 1.2
    # (pooling A and B over the perturbations would give 7 / 6)
    ranks = figures.mean_ranks(two_perturbations, DIRECTIONS)
    assert ranks.to_dict() == pytest.approx({"scgen": 1.2, "mean_shift": 1.8})
    one = metrics.assign(perturbation="stimulated")
    fig = figures.metric_heatmaps(one, DIRECTIONS)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["A", "B"]
    assert figures.mean_ranks(one, DIRECTIONS).equals(figures.mean_ranks(metrics, DIRECTIONS))
    assert figures.by_split(one) is one and not figures.several_perturbations(one)


def test_metric_heatmaps_draw_one_panel_per_present_metric(metrics, tmp_path):
    fig = figures.metric_heatmaps(metrics, DIRECTIONS)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["r2_mean_all (higher is better)", "e_distance (lower is better)"]
    assert_drawn(fig, tmp_path)


def test_mean_ranks_follow_each_metrics_direction(metrics):
    ranks = figures.mean_ranks(metrics, DIRECTIONS)
    # scgen: r2 rank 1 (A) and 2 (B), e_distance rank 1 (A, B) -> 1.25; mean_shift -> 1.75
    assert ranks.to_dict() == {"scgen": 1.25, "mean_shift": 1.75}
    tied = metrics.assign(r2_mean_all=0.5)
    assert figures.mean_ranks(tied, {"r2_mean_all": "higher"}).tolist() == [1.5, 1.5]


def test_ranking_bars(metrics, tmp_path):
    """One bar per model as long as its mean rank, best on top."""
    ranks = figures.mean_ranks(metrics, DIRECTIONS)
    fig = figures.ranking_bars(ranks, figures.model_colors(MODELS), 4)
    ax = fig.axes[0]
    by_row = sorted(ax.patches, key=lambda bar: bar.get_y())
    assert [bar.get_width() for bar in by_row] == [1.25, 1.75]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["scgen", "mean_shift"]
    assert ax.yaxis_inverted() and "over 4 metric × group scores" in ax.get_xlabel()
    assert_drawn(fig, tmp_path)


def test_cost_bars_skip_unmeasured_memory(tmp_path):
    """Seconds and memory panels, a bar per model at the mean of its measured runs ("-": not
    measured, left out)."""
    benchmarks = pd.DataFrame({"model": ["mean_shift", "mean_shift", "scgen"],
                               "s": [1.5, 1.7, 45.0], "max_rss": ["160.2", "-", "540.0"]})
    fig = figures.cost_bars(benchmarks, figures.model_colors(MODELS))
    seconds, memory = fig.axes
    assert [bar.get_height() for bar in bars(seconds)] == pytest.approx([1.6, 45.0])
    assert [bar.get_height() for bar in bars(memory)] == pytest.approx([160.2, 540.0])
    assert points(seconds) == 3 and points(memory) == 2
    assert [t.get_text() for t in memory.get_xticklabels()] == ["mean_shift", "scgen"]
    assert_drawn(fig, tmp_path)


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
    view = figures.latent_view(obs, latent, seed=0)
    assert leiden_ari(view, "cell_type", seed=0, resolution=0.1) == pytest.approx(1.0)
    shuffled = obs.assign(cell_type=np.random.default_rng(0).permutation(obs["cell_type"]))
    view = figures.latent_view(shuffled, latent, seed=0)
    assert abs(leiden_ari(view, "cell_type", seed=0, resolution=0.1)) < 0.1
    again = figures.latent_view(obs, latent, seed=0)
    assert np.array_equal(again.obsm["X_umap"], figures.latent_view(obs, latent, 0).obsm["X_umap"])


def test_latent_umaps_and_comparison(tmp_path):
    obs, latent = separated_latent()
    adata = ad.AnnData(obs=obs, obsm={"X_latent": latent})
    fig = figures.latent_umaps(adata, "X_latent", ["cell_type", "condition"])
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["cell_type", "condition"]
    assert all(points(ax) == len(obs) for ax in panels)
    assert_drawn(fig, tmp_path, "umaps")
    fig, aris = figures.latent_comparison(obs, {"batch": latent, "none": latent[:, ::-1]},
                                        "cell_type", "condition", seed=0)
    assert set(aris) == {"batch", "none"} and all(-1 <= a <= 1 for a in aris.values())
    # a column per latent: group, Leiden clusters (with the ARI), condition
    titles = sorted(ax.get_title() for ax in fig.axes if ax.get_title())
    assert titles == sorted(f"{name}\n{row}" for name in ("batch", "none") for row in
                            ("cell_type", "condition", f"Leiden, ARI = {aris[name]:.2f}"))
    assert all(points(ax) == len(obs) for ax in fig.axes if ax.get_title())
    assert_drawn(fig, tmp_path, "comparison")


def test_differing_params_tell_the_entries_of_a_class_apart():
    params = {"scgen": {"norm": "batch", "n_latent": 100, "lr": 1e-3},
              "scgen_nonorm": {"norm": "none", "n_latent": 100, "lr": 1e-3},
              "scgen_small": {"norm": "batch", "n_latent": 10, "lr": 1e-3}}
    assert figure_inputs.differing_params(params) == {
        "scgen": {"n_latent": 100, "norm": "batch"},
        "scgen_nonorm": {"n_latent": 100, "norm": "none"},
        "scgen_small": {"n_latent": 10, "norm": "batch"}}
    assert figure_inputs.differing_params({"contrastivevi": {"n_hidden": 128}}) == {
        "contrastivevi": {}}


def assert_labels_apart(fig, labels, ax=None):
    renderer = fig.canvas.get_renderer()
    boxes = [figures.text_box(label, renderer) for label in labels]
    inside = (ax or fig.axes[0]).get_window_extent(renderer)
    for i, box in enumerate(boxes):
        assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
        assert not any(box.overlaps(other) for other in boxes[i + 1:]), labels[i].get_text()


def test_scatter_labels_in_a_dense_cluster_do_not_overlap(tmp_path):
    """Ten DEGs at nearly one point: labels move apart (with a leader line when further out) or,
    where no room is left, are left out; the highest-ranked come first."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    genes = [f"GENE{i}" for i in range(60)]
    truth = rng.gamma(2.0, 1.0, (40, 60))
    truth[:, :10] = 3.0 + rng.normal(0, 0.01, (40, 10))
    pred = truth + rng.normal(0, 0.01, truth.shape)
    var = pd.DataFrame(index=genes)
    fig = figures.expression_scatter(ad.AnnData(pred, var=var), ad.AnnData(truth, var=var),
                                   genes[:10], "dense", "mean")
    labels = [a for a in fig.axes[0].texts if isinstance(a, matplotlib.text.Annotation)]
    names = [a.get_text() for a in labels]
    assert names[:3] == genes[:3] and names == [g for g in genes[:10] if g in names]
    assert len(names) >= 5
    assert_labels_apart(fig, labels)
    assert_drawn(fig, tmp_path)


def test_panel_splits_take_the_panel_group_where_held_out():
    """Per perturbation, the split of `panel_group` where that group is held out under it, else
    its first split; the files minus the control cells."""
    names = ["stimulated/B", "stimulated/NK", "infected/CD4", "infected/B"]
    files = {name: {"control": f"{name}/control", "truth": f"{name}/truth",
                    "degs": f"{name}/degs", "predictions": {"scgen": f"{name}/pred"}}
             for name in names}
    spec = {"perturbed": ["stimulated", "infected"]}
    assert list(figure_inputs.panel_splits(spec, files)) == ["stimulated/B", "infected/CD4"]
    chosen = figure_inputs.panel_splits({**spec, "panel_group": "NK"}, files)
    assert list(chosen) == ["stimulated/NK", "infected/CD4"]
    assert chosen["stimulated/NK"] == {"truth": "stimulated/NK/truth",
                                       "degs": "stimulated/NK/degs",
                                       "predictions": {"scgen": "stimulated/NK/pred"}}


def test_the_dag_imports_no_matplotlib():
    """workflow/rules/figures.smk imports figure_inputs while Snakemake builds the DAG."""
    code = ("import sys, pertflow.benchmark.figure_inputs; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_perturbation_panels(held_out, two_perturbations, tmp_path):
    """scGen's Figure 3: a row per perturbation, its held-out group's mean scatter with the top
    DEGs labelled, and a bar (mean over seeds, a dot per seed) for every group held out under it,
    the scatter's group outlined."""
    _, truth, pred, degs = held_out
    panels = {"stimulated": {"group": "B", "pred": pred, "truth": truth, "degs": degs},
              "infected": {"group": "C", "pred": pred, "truth": truth, "degs": degs}}
    color = figures.model_colors(MODELS)["scgen"]
    fig = figures.perturbation_panels(panels, two_perturbations, "scgen", color,
                                    value="r2_mean_all")
    assert len(fig.axes) == 4
    rows = [fig.axes[:2], fig.axes[2:]]
    assert [scatter.get_title() for scatter, _ in rows] == ["stimulated: B", "infected: C"]
    for scatter, _ in rows:
        every, top = scatter.collections
        assert len(every.get_offsets()) == truth.n_vars and len(top.get_offsets()) == len(degs)
        labels = [a for a in scatter.texts if isinstance(a, matplotlib.text.Annotation)]
        names = [a.get_text() for a in labels]
        assert names[:3] == degs[:3] and names == [g for g in degs[:10] if g in names]
        assert_labels_apart(fig, labels, scatter)
        assert "R² top 20 DEGs" in "".join(t.get_text() for t in scatter.texts)
    (_, stimulated), (_, infected) = rows
    assert stimulated.get_title() == "stimulated: scgen, every held-out group"
    assert [t.get_text() for t in stimulated.get_xticklabels()] == ["A", "B"]
    assert [t.get_text() for t in infected.get_xticklabels()] == ["A", "B", "C"]
    assert [round(bar.get_height(), 6) for bar in bars(stimulated)] == [0.9, 0.5]
    assert [round(bar.get_height(), 6) for bar in bars(infected)] == [0.6, 0.2, 0.6]
    assert points(stimulated) == 4 and points(infected) == 6  # two seeds per group
    outlined = [bar.get_linewidth() > 0 and bar.get_edgecolor()[3] > 0 for bar in bars(infected)]
    assert outlined == [False, False, True]
    assert_drawn(fig, tmp_path)
