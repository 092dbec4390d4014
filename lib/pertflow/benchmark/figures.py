"""Figures: scGen's Figure 2 panels per model and split, its Figure 3 (one row per perturbation),
metric overviews across models, splits and seeds, latent spaces, and cost. Every drawing function
returns a matplotlib figure; ``save`` writes it in each requested format.

A metrics table with a ``perturbation`` column holding several labels (a dataset of several
perturbations) is drawn per (perturbation, group) split; with one label, or none, exactly as a
table of groups alone."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pertflow.benchmark.metrics import leiden_ari, r2_of  # noqa: E402
from pertflow.data.preprocess import gene_symbols  # noqa: E402
from pertflow.benchmark.summary import of_perturbation, perturbations_of  # noqa: E402
from pertflow.utils import atomic_path, dense  # noqa: E402

# Colours of the reference populations, shared by the UMAPs and the violins.
CONTROL_COLOR, REAL_COLOR = "0.75", "0.15"


def model_colors(models: list[str]) -> dict[str, tuple]:
    """One colour per model, stable across figures (assigned in sorted-name order)."""
    cmap = plt.get_cmap("tab10" if len(models) <= 10 else "tab20")
    return {model: cmap(i % cmap.N) for i, model in enumerate(sorted(models))}


def save(fig, paths: list[str | Path]) -> None:
    """Save one figure in every requested format, each written atomically."""
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# One model, one held-out group: predicted vs real perturbed cells

GENE_STATISTICS = {"mean": np.mean, "variance": np.var}


def expression_scatter(pred: ad.AnnData, truth: ad.AnnData, degs: list[str], title: str,
                       statistic: str = "mean", n_labels: int = 10):
    """Per-gene ``statistic`` (mean or variance over cells) of predicted vs real perturbed cells;
    top DEGs highlighted and the highest-ranked ones labelled (by symbol, see gene_symbols)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    draw_expression_scatter(ax, pred, truth, degs, title, statistic, n_labels)
    return fig


def draw_expression_scatter(ax, pred: ad.AnnData, truth: ad.AnnData, degs: list[str], title: str,
                            statistic: str = "mean", n_labels: int = 10) -> None:
    """expression_scatter on the axes ``ax``. Labels are placed in display space: the figure's
    layout must be final before (no tight or constrained layout afterwards)."""
    genes, names = truth.var_names, gene_symbols(truth)
    x = GENE_STATISTICS[statistic](dense(truth.X), axis=0)
    y = GENE_STATISTICS[statistic](dense(pred[:, genes].X), axis=0)
    top = genes.get_indexer(degs)
    ax.scatter(x, y, s=4, c="0.6", alpha=0.6, linewidths=0, label="all genes")
    ax.scatter(x[top], y[top], s=8, c="tab:red", linewidths=0, label=f"top {len(top)} DEGs")
    lim = [min(0.0, x.min(), y.min()), max(x.max(), y.max()) * 1.05]
    ax.plot(lim, lim, ls="--", c="0.3", lw=0.8)
    ax.set(xlim=lim, ylim=lim, xlabel=f"real {statistic} expression",
           ylabel=f"predicted {statistic} expression", title=title)
    ax.text(0.03, 0.97, f"R² all = {r2_of(x, y):.3f}\nR² top {len(top)} DEGs = "
            f"{r2_of(x[top], y[top]):.3f}", transform=ax.transAxes, va="top", fontsize=8)
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    labelled = top[:n_labels]
    place_labels(ax, x[labelled], y[labelled], [names[i] for i in labelled])


# Where a label may go around its point, in points: nearest first, then further out.
LABEL_OFFSETS = [(dx * r, dy * r) for r in (3, 9, 16, 26, 38)
                 for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1),
                                (0, -1))]


def text_box(label, renderer) -> Bbox:
    """An annotation's text box in display space, without its leader line."""
    label.update_positions(renderer)
    return matplotlib.text.Text.get_window_extent(label, renderer)


def place_labels(ax, x: np.ndarray, y: np.ndarray, names: list[str], fontsize: float = 7) -> list:
    """Label points (x, y) in order without overlap: each label takes the first offset of
    ``LABEL_OFFSETS`` where its box overlaps no label placed before it, no labelled point and
    stays inside the axes, clear of the text and legend already there; beyond the nearest ring a
    thin line leads back to the point. A label that fits nowhere (a crowded region) is left out
    rather than drawn over another. The axes' limits must be set first. Returns the placed
    annotations."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    scale = fig.dpi / 72  # points to pixels
    anchors = ax.transData.transform(np.column_stack([x, y])) if len(x) else np.empty((0, 2))
    dot = 2.5 * scale  # half the side of a box around a labelled point's marker
    taken = [Bbox.from_extents(px - dot, py - dot, px + dot, py + dot)
             for px, py in anchors]
    # Text and legend already on the axes (e.g. the R² note) are kept clear too.
    taken += [artist.get_window_extent(renderer) for artist in [*ax.texts, ax.get_legend()]
              if artist is not None]
    placed = []
    for (px, py), xi, yi, name in zip(anchors, x, y, names):
        for dx, dy in LABEL_OFFSETS:
            label = ax.annotate(name, (xi, yi), xytext=(dx, dy), textcoords="offset points",
                                fontsize=fontsize, ha="left" if dx >= 0 else "right",
                                va="bottom" if dy >= 0 else "top",
                                arrowprops=None if abs(dx) + abs(dy) <= 6 else
                                dict(arrowstyle="-", lw=0.4, color="0.4", shrinkA=0,
                                     shrinkB=1))
            box = text_box(label, renderer)
            clear = (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0
                     and box.y1 <= inside.y1 and not any(box.overlaps(t) for t in taken))
            if clear:
                taken.append(box)
                placed.append(label)
                break
            label.remove()
    return placed


def held_out_umap(control: ad.AnnData, truth: ad.AnnData, pred: ad.AnnData, title: str,
                  color: tuple, seed: int, n_pcs: int = 50):
    """Joint UMAP (PCA of the three populations together) of the held-out group's control, real
    perturbed and predicted perturbed cells."""
    import scanpy as sc

    genes = truth.var_names
    cells = ad.concat({"control": control[:, genes], "real perturbed": truth,
                       "predicted": pred[:, genes]}, label="cells", index_unique="-")
    cells.X = dense(cells.X).astype(np.float32)
    sc.pp.pca(cells, n_comps=min(n_pcs, cells.n_obs - 1, cells.n_vars - 1), random_state=seed)
    sc.pp.neighbors(cells, random_state=seed)
    sc.tl.umap(cells, random_state=seed)
    cells.uns["cells_colors"] = [CONTROL_COLOR, REAL_COLOR, matplotlib.colors.to_hex(color)]
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    sc.pl.umap(cells, color="cells", ax=ax, show=False, frameon=False, title=title, size=10)
    return fig


def top_deg_violins(control: ad.AnnData, truth: ad.AnnData, preds: dict[str, ad.AnnData],
                    genes: list[str], colors: dict[str, tuple], title: str):
    """One violin panel per gene: its expression in control, real perturbed and every model's
    predicted perturbed cells of one held-out group; panels titled by the genes' symbols."""
    import scanpy as sc

    symbol = dict(zip(truth.var_names, gene_symbols(truth)))
    # Reference names no model entry can take (configs name a model "control").
    parts = {"control cells": control[:, genes], "real perturbed": truth[:, genes],
             **{f"{model} (predicted)": pred[:, genes] for model, pred in preds.items()}}
    cells = ad.concat(parts, label="cells", index_unique="-")
    cells.X = dense(cells.X)
    cells.obs["cells"] = pd.Categorical(cells.obs["cells"], categories=list(parts))
    cells.uns["cells_colors"] = [CONTROL_COLOR, REAL_COLOR] + [
        matplotlib.colors.to_hex(colors[model]) for model in preds]
    fig, axes = plt.subplots(1, len(genes), figsize=(0.5 * len(parts) * len(genes) + 1, 3.6),
                             squeeze=False)
    for ax, gene in zip(axes[0], genes):
        sc.pl.violin(cells, gene, groupby="cells", ax=ax, show=False, stripplot=False,
                     rotation=90, ylabel="expression")
        ax.set_title(symbol.get(gene, gene))
    fig.suptitle(title, y=1.02)
    return fig


# ---------------------------------------------------------------------------------------------
# Across models, held-out groups and seeds


def several_perturbations(metrics: pd.DataFrame) -> bool:
    """Whether the table holds runs of more than one perturbation."""
    return len(perturbations_of(metrics)) > 1


def by_split(metrics: pd.DataFrame) -> pd.DataFrame:
    """The table with its ``group`` column naming each split: ``perturbation/group`` when it holds
    several perturbations (so that one group under two perturbations stays two columns and two
    rank scores), the table unchanged otherwise."""
    if not several_perturbations(metrics):
        return metrics
    return metrics.assign(group=metrics["perturbation"].astype(str) + "/"
                          + metrics["group"].astype(str))


def draw_r2_bars(ax, metrics: pd.DataFrame, value: str, models: list[str],
                 colors: dict[str, tuple]) -> None:
    """On ``ax``: a bar per held-out group (x) and model (hue, each at its place among
    ``models``) at the mean over seeds of ``value``, a dot per seed."""
    groups = sorted(metrics["group"].unique())
    width = 0.8 / len(models)
    for m, model in enumerate(models):
        rows = metrics[metrics["model"] == model]
        for g, group in enumerate(groups):
            values = rows.loc[rows["group"] == group, value].to_numpy()
            if len(values) == 0:
                continue
            xpos = g + (m - (len(models) - 1) / 2) * width
            ax.bar(xpos, values.mean(), width, color=colors[model],
                   label=model if g == 0 else None)
            ax.scatter(np.full(len(values), xpos), values, s=6, c="k", zorder=3)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")


def r2_bars(metrics: pd.DataFrame, value: str, colors: dict[str, tuple]):
    """Bars: mean over seeds of ``value`` per held-out group (x) and model (hue); dots: seeds.
    With several perturbations, one row of axes per perturbation (titled with it, one y scale),
    the legend of models on the first."""
    models = sorted(metrics["model"].unique())
    ylim = (min(0.0, metrics[value].min()), 1.0)
    perturbations = perturbations_of(metrics)
    facets = ({p: metrics[metrics["perturbation"].astype(str) == p] for p in perturbations}
              if len(perturbations) > 1 else {None: metrics})
    n_groups = max(rows["group"].nunique() for rows in facets.values())
    width = max(5.0, 1.1 * n_groups * max(1, len(models) / 3))
    fig, axes = plt.subplots(len(facets), 1, figsize=(width, 3.5 * len(facets)), squeeze=False)
    for ax, (perturbation, rows) in zip(axes[:, 0], facets.items()):
        draw_r2_bars(ax, rows, value, models, colors)
        ax.set(ylabel=value, ylim=ylim)
        if perturbation is not None:
            ax.set_title(perturbation)
    axes[0, 0].legend(fontsize=7, frameon=False, bbox_to_anchor=(1.0, 1.0), loc="upper left")
    if len(facets) > 1:
        fig.tight_layout()
    return fig


def present_metrics(metrics: pd.DataFrame, directions: dict[str, str]) -> dict[str, str]:
    """The metrics of ``directions`` (name: "higher" | "lower" is better) that the table holds,
    in the order of ``directions``."""
    return {name: way for name, way in directions.items() if name in metrics.columns}


def metric_heatmaps(metrics: pd.DataFrame, directions: dict[str, str]):
    """One heatmap per metric: models (rows) × held-out groups (columns; ``perturbation/group``
    with several perturbations), mean over seeds, the colour scale of each panel oriented so that
    the better value is always the brighter."""
    present = present_metrics(metrics, directions)
    means = by_split(metrics).groupby(["model", "group"])[list(present)].mean()
    models, groups = means.index.unique("model"), means.index.unique("group")
    n_cols = min(3, len(present))
    n_rows = -(-len(present) // n_cols)
    width, height = 0.55 * len(groups) + 2.2, 0.3 * len(models) + 1.2
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows),
                             squeeze=False, constrained_layout=True)
    for ax, (name, way) in zip(axes.flat, present.items()):
        grid = means[name].unstack("group").reindex(index=models, columns=groups)
        image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto",
                          cmap="viridis" if way == "higher" else "viridis_r")
        ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(models)), models, fontsize=7)
        ax.set_title(f"{name} ({way} is better)", fontsize=8)
        if grid.size <= 120:  # values stay legible on small grids only
            for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
                if np.isfinite(value):
                    red, green, blue, _ = image.cmap(image.norm(value))
                    light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # luma
                    ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=5,
                            c="k" if light else "w")
        fig.colorbar(image, ax=ax, shrink=0.8)
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    return fig


def mean_ranks(metrics: pd.DataFrame, directions: dict[str, str]) -> pd.Series:
    """Each model's rank (1 = best; ties share the mean rank; a missing value ranks last) on every
    metric and split (held-out group, or perturbation/group with several perturbations), from the
    mean over seeds, averaged over metrics and splits; sorted best first."""
    present = present_metrics(metrics, directions)
    means = by_split(metrics).groupby(["group", "model"])[list(present)].mean()
    ranks = pd.concat({name: means[name].groupby("group").rank(ascending=way == "lower",
                                                                  na_option="bottom")
                       for name, way in present.items()}, axis=1)
    return ranks.stack().groupby("model").mean().sort_values().rename("mean rank")


def ranking_bars(ranks: pd.Series, colors: dict[str, tuple], n_scores: int,
                 split: str = "group"):
    """Horizontal bars of the mean rank per model, best on top; the axis counts the ``n_scores``
    metric × ``split`` scores averaged."""
    fig, ax = plt.subplots(figsize=(4.5, 0.35 * len(ranks) + 1))
    ax.barh(range(len(ranks)), ranks.to_numpy(), color=[colors[m] for m in ranks.index])
    for i, value in enumerate(ranks.to_numpy()):
        ax.text(value, i, f" {value:.2f}", va="center", fontsize=7)
    ax.set_yticks(range(len(ranks)), ranks.index)
    ax.invert_yaxis()
    ax.set(xlabel=f"mean rank over {n_scores} metric × {split} scores (1 = best)",
           xlim=(0, ranks.max() * 1.15))
    return fig


def cost_bars(benchmarks: pd.DataFrame, colors: dict[str, tuple]):
    """Training wall-clock seconds and peak resident memory per model: bars are the mean over
    held-out groups and seeds, dots the single runs. ``benchmarks`` holds Snakemake's benchmark
    columns ``s`` and ``max_rss`` (MB) with a ``model`` column."""
    models = sorted(benchmarks["model"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.2 * len(models)), 3.5))
    for ax, (column, label) in zip(axes, [("s", "training + prediction (s)"),
                                          ("max_rss", "peak memory, max RSS (MB)")]):
        for i, model in enumerate(models):
            values = pd.to_numeric(benchmarks.loc[benchmarks["model"] == model, column],
                                   errors="coerce").dropna().to_numpy()  # "-": not measured
            if len(values):
                ax.bar(i, values.mean(), 0.7, color=colors[model])
                ax.scatter(np.full(len(values), i), values, s=6, c="k", zorder=3)
        ax.set_xticks(range(len(models)), models, rotation=45, ha="right", fontsize=8)
        ax.set(ylabel=label, yscale="log")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Several perturbations: scGen's Figure 3


def perturbation_panels(panels: dict[str, dict], metrics: pd.DataFrame, model: str,
                        color: tuple, value: str = "r2_mean_top100", n_labels: int = 10):
    """scGen's Figure 3, one row per perturbation of ``panels`` ({perturbation: {"group",
    "pred", "truth", "degs"}}): left, the mean expression scatter of that held-out group
    (expression_scatter: predicted vs real, top DEGs labelled); right, ``value`` of ``model`` for
    every held-out group of the perturbation in ``metrics``: bars at the mean over seeds, a dot
    per seed, the group of the scatter outlined."""
    rows = metrics[metrics["model"] == model]
    n_groups = max([1, *(of_perturbation(rows, p)["group"].nunique() for p in panels)])
    bars_width = max(3.0, 0.45 * n_groups + 1.2)
    fig, axes = plt.subplots(len(panels), 2, figsize=(4.5 + bars_width + 1.2, 4.9 * len(panels)),
                             squeeze=False, gridspec_kw={"width_ratios": [4.5, bars_width]})
    # The layout is fixed before the scatters place their labels (in display space).
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1 / len(panels),
                        top=1 - 0.06 / len(panels), wspace=0.3, hspace=0.45)
    for (scatter, bars), (perturbation, panel) in zip(axes, panels.items()):
        group = str(panel["group"])
        draw_expression_scatter(scatter, panel["pred"], panel["truth"], panel["degs"],
                                f"{perturbation}: {group}", "mean", n_labels)
        runs = of_perturbation(rows, perturbation)
        groups = sorted(runs["group"].astype(str).unique())
        for g, name in enumerate(groups):
            values = runs.loc[runs["group"].astype(str) == name, value].dropna().to_numpy()
            if len(values) == 0:
                continue
            bars.bar(g, values.mean(), 0.7, color=color,
                     edgecolor="k" if name == group else "none", linewidth=1.2)
            bars.scatter(np.full(len(values), g), values, s=8, c="k", zorder=3)
        bars.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize=8)
        low = runs[value].min() if len(runs) else 0.0
        bars.set(ylabel=value, ylim=(min(0.0, low), 1.0),
                 title=f"{perturbation}: {model}, every held-out group")
    return fig


# ---------------------------------------------------------------------------------------------
# Latent spaces


def latent_view(obs: pd.DataFrame, latent: np.ndarray, seed: int) -> ad.AnnData:
    """Cells with only ``obs`` and a latent: its neighbour graph and UMAP, seeded; strings and
    booleans of ``obs`` become categories so that they plot as such."""
    import scanpy as sc

    obs = obs.copy()
    for column in obs:
        if not pd.api.types.is_numeric_dtype(obs[column]) or obs[column].dtype == bool:
            obs[column] = obs[column].astype(str).astype("category")
    view = ad.AnnData(obs=obs, obsm={"latent": np.asarray(latent)})
    sc.pp.neighbors(view, use_rep="latent", random_state=seed)
    sc.tl.umap(view, random_state=seed)
    return view


def latent_umaps(adata: ad.AnnData, latent_key: str, colors: list[str], seed: int = 0):
    """UMAP of ``adata.obsm[latent_key]``, one panel per obs column in ``colors``."""
    import scanpy as sc

    view = latent_view(adata.obs[colors], adata.obsm[latent_key], seed)
    fig, axes = plt.subplots(1, len(colors), figsize=(4.2 * len(colors), 4))
    for ax, color in zip(np.atleast_1d(axes), colors):
        sc.pl.umap(view, color=color, ax=ax, show=False, frameon=False, title=color, size=8)
    fig.suptitle(latent_key, y=1.04)
    return fig


def latent_comparison(obs: pd.DataFrame, latents: dict[str, np.ndarray], group: str,
                      condition: str, seed: int, resolution: float = 0.5):
    """Latent spaces side by side (one column each): UMAP coloured by ``group``, by the Leiden
    clusters of the latent (ARI against ``group`` in the title) and by ``condition``.
    Returns the figure and each latent's ARI."""
    import scanpy as sc

    fig, axes = plt.subplots(3, len(latents), figsize=(5.6 * len(latents), 12), squeeze=False)
    aris = {}
    for column, (name, latent) in zip(axes.T, latents.items()):
        view = latent_view(obs[[group, condition]], latent, seed)
        aris[name] = ari = leiden_ari(view, group, seed, resolution)
        titles = {group: f"{name}\n{group}", "leiden": f"{name}\nLeiden, ARI = {ari:.2f}",
                  condition: f"{name}\n{condition}"}
        for ax, (color, title) in zip(column, titles.items()):
            sc.pl.umap(view, color=color, ax=ax, show=False, frameon=False, title=title, size=8)
    return fig, aris
