"""Integration: the whole workflow, run by Snakemake in a temporary directory."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import ROOT, TINY_MODELS, assert_figures, default_config, run
from pertflow.benchmark.metrics import CALIBRATED_COLUMNS, CEILING_COLUMNS, METRICS
from pertflow.benchmark.summary import ALL_GROUPS

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def test_default_workflow_produces_metrics_figures_and_report(tmp_path):
    config = default_config(**TINY_MODELS)
    # Two of the six types, one per lineage: every model, metric, figure and the report, in a
    # third of the time of all six (held_out: all is the Kang and tiny runs' business).
    config["datasets"]["simulated"]["held_out"] = ["B", "Monocyte"]
    run(tmp_path, config)
    results = tmp_path / "results" / "simulated"
    metrics = pd.read_csv(results / "metrics.csv")
    groups = sorted(metrics["group"].unique())
    assert groups == ["B", "Monocyte"]
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
    assert list(metrics.columns) == ["dataset", "model", "perturbation", "group", "seed", *METRICS,
                                     "n_pred", "n_truth", *CEILING_COLUMNS, *CALIBRATED_COLUMNS]
    # the calibrated scores: control 0 where there is a ceiling; discrimination across groups
    control = metrics[metrics["model"] == "control"]
    assert (control["r2_mean_top100_calibrated"].dropna() == 0).all()
    assert metrics["r2_mean_top100_ceiling"].notna().any()
    assert metrics["discrimination"].between(0, 1).all()
    means = metrics.groupby("model")[list(METRICS)].mean()
    for distance in ("e_distance", "e_distance_unbiased", "mmd"):
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
