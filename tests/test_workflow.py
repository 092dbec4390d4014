"""Integration: the whole workflow, run by Snakemake in a temporary directory."""

from __future__ import annotations

import http.server
import subprocess
import threading
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, SNAKEMAKE, TINY_MODELS, default_config, with_params
from pertflow.metrics import METRICS
from pertflow.summary import ALL_GROUPS

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def run(workdir: Path, config: dict, *extra: str, check: bool = True):
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # extra first: targets after --configfile would be read as more config files
    result = subprocess.run([*SNAKEMAKE, *extra, "--directory", str(workdir), "--configfile",
                             str(config_path)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def assert_figures(figures: Path, models: list[str], latent_models: list[str],
                   groups: list[str], latent_classes: list[str]):
    """Every figure of a finished run: per model and held-out group, per group, per dataset, and
    the side-by-side latents of each model class with a latent space."""
    def drawn(path: Path) -> bool:
        return path.stat().st_size > 10_000 and path.with_suffix(".pdf").exists()

    for kind in ("mean_scatter", "variance_scatter", "umap"):
        for model in models:
            assert sorted(p.stem for p in (figures / kind / model).glob("*.png")) == groups
            assert all(drawn(figures / kind / model / f"{g}.png") for g in groups), (kind, model)
    assert all(drawn(figures / "violin" / f"{g}.png") for g in groups)
    for name in ("r2_mean_top100", "r2_mean_all", "metrics_heatmap", "ranking", "cost"):
        assert drawn(figures / f"{name}.png"), name
    for model in latent_models:
        assert any(drawn(p) for p in (figures / "latent" / model).glob("*.png")), model
    assert sorted(p.name for p in figures.glob("*_latents.png")) == sorted(
        f"{cls}_latents.png" for cls in latent_classes)
    assert all(drawn(figures / f"{cls}_latents.png") for cls in latent_classes)


def test_default_workflow_produces_metrics_figures_and_report(tmp_path):
    config = default_config(**TINY_MODELS)
    # Three of the six types, both lineages: every model, metric, figure and the report, in half
    # the time of all six (held_out: all is the Kang and tiny runs' business).
    config["datasets"]["simulated"]["held_out"] = ["B", "Monocyte", "T-helper"]
    run(tmp_path, config)
    results = tmp_path / "results" / "simulated"
    metrics = pd.read_csv(results / "metrics.csv")
    groups = sorted(metrics["group"].unique())
    assert groups == ["B", "Monocyte", "T-helper"]
    assert set(metrics["model"]) == set(config["models"])
    assert len(metrics) == len(config["models"]) * len(groups)
    assert metrics[["r2_mean_all", "r2_mean_top100"]].notna().all().all()
    by_model = metrics.groupby("model")["r2_mean_top100"].mean()
    assert by_model["mean_shift"] > by_model["control"]
    latent_models = ["scgen", "contrastivevi", "transformer"]
    assert_figures(results / "figures", list(config["models"]), latent_models, groups,
                   latent_models)
    # contrastiveVI's two latent spaces side by side (its only entry: labelled by name alone)
    comparison = (results / "logs" / "plot_latent_comparison" / "contrastivevi.log").read_text()
    assert "contrastivevi: the only entry of its class" in comparison
    assert "'contrastivevi X_background'" in comparison
    assert "'contrastivevi X_salient'" in comparison
    latents = {"scgen": ["X_scgen"], "contrastivevi": ["X_background", "X_salient"],
               "transformer": ["X_transformer"]}
    for model, keys in latents.items():
        for key in keys:
            assert (results / "figures" / "latent" / model / f"{key}.png").stat().st_size > 10_000
    assert list(metrics.columns) == ["dataset", "model", "group", "seed", *METRICS,
                                     "n_pred", "n_truth"]
    means = metrics.groupby("model")[list(METRICS)].mean()
    for distance in ("e_distance", "mmd"):
        assert means.loc["mean_shift", distance] < means.loc["control", distance]
    # A prediction of no change moves no gene: no DEG called, no direction right.
    assert (means.loc["control", ["deg_overlap_top100", "direction_accuracy_top100"]] == 0).all()
    summary = pd.read_csv(results / "metrics_summary.csv")
    pooled = summary[summary["group"] == ALL_GROUPS]
    assert len(pooled) == len(config["models"]) * len(METRICS)
    summary_text = (results / "summary.md").read_text()
    assert all(metric in summary_text for metric in METRICS)
    run(tmp_path, config, "--report", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 100_000
    # A finished run is complete: nothing left to do.
    assert "Nothing to be done" in run(tmp_path, config, "-n").stdout


def test_configfile_replaces_the_default_config(tmp_path):
    """`--configfile` runs that config alone, not merged with config/config.yaml (Snakemake's
    default would add the default dataset and models to it)."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((ROOT / "config" / "config.yaml").read_text())
    config = default_config()
    config["datasets"] = {"other": config["datasets"]["simulated"]}
    config["models"] = {"control": {}}
    jobs = run(tmp_path, config, "-n").stdout
    assert "results/other/" in jobs and "results/simulated" not in jobs


@pytest.fixture
def kang_url(kang_path):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(kang_path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{kang_path.name}"
    server.shutdown()


def test_kang_downloaded_over_http_with_all_seven_types(tmp_path, kang_url):
    config = yaml.safe_load((ROOT / "config" / "kang_valid.yaml").read_text())
    config["datasets"]["kang_valid"]["source"] = {
        "url": kang_url,
        "sha256": "83f89f5356a4c01f65bbcee225eb45d8d8b13b6c962724431a26c1bf568ff09e",
    }
    # Two seeds of the baseline that samples (its cell-type balancing) and of control.
    config["models"] = {name: entry for name, entry in config["models"].items()
                        if name in ("control", "mean_shift_balanced")}
    config["seeds"] = [0, 1]
    run(tmp_path, config, "results/kang_valid/metrics_summary.csv")  # tables; figures: below
    results = tmp_path / "results" / "kang_valid"
    assert "83f89f5356a4c01f" in (results / "logs" / "download.log").read_text()
    metrics = pd.read_csv(results / "metrics.csv").set_index(["model", "group"])
    assert sorted(metrics.index.unique("group")) == sorted(
        ["CD4T", "CD14+Mono", "B", "CD8T", "NK", "FCGR3A+Mono", "Dendritic"])
    top100 = metrics["r2_mean_top100"].groupby(["model", "group"]).mean()
    assert top100["mean_shift_balanced", "CD4T"] > top100["control", "CD4T"]
    summary = pd.read_csv(results / "metrics_summary.csv").set_index(["model", "group", "metric"])
    balanced = summary.loc["mean_shift_balanced", "CD4T", "r2_mean_top100"]
    assert balanced["n"] == 2 and balanced["ci_low"] < balanced["mean"] < balanced["ci_high"]


def test_kang_valid_draws_every_figure_for_one_held_out_type(tmp_path, kang_path):
    """The real-data config, short training, CD4T held out: scGen's Figure 2 panels for every
    model (ISG15 the top DEG) and the encoder normalisation ablation side by side."""
    config = with_params(yaml.safe_load((ROOT / "config" / "kang_valid.yaml").read_text()),
                         TINY_MODELS)
    dataset = config["datasets"]["kang_valid"]
    dataset["source"] = {"path": str(kang_path)}
    dataset["held_out"] = ["CD4T"]
    # Two baselines fewer than the config (the default test draws theirs): every latent model stays.
    for name in ("mean_shift_balanced", "pca_shift"):
        del config["models"][name]
    run(tmp_path, config)
    results = tmp_path / "results" / "kang_valid"
    models = list(config["models"])
    assert {"scgen_layernorm", "scgen_nonorm"} <= set(models)
    assert_figures(results / "figures", models,
                   ["scgen", "scgen_layernorm", "scgen_nonorm", "contrastivevi", "transformer"],
                   ["CD4T"], ["scgen", "contrastivevi", "transformer"])
    assert pd.read_csv(results / "splits" / "CD4T" / "degs.csv")["names"][0] == "ISG15"
    # The ablation's entries, each labelled by the param that tells it apart.
    ablation = (results / "logs" / "plot_latent_comparison" / "scgen.log").read_text()
    assert all(f"{name}: norm = {norm}" in ablation for name, norm in (
        ("scgen", "batch"), ("scgen_layernorm", "layer"), ("scgen_nonorm", "none")))
    assert "'scgen_nonorm (norm: none)'" in ablation
