"""Datasets with several perturbations: the paper config for scGen's Figure 3 (Haber 2017) read
against a file of its layout, and a three-label simulation through the whole workflow."""

from __future__ import annotations

import subprocess

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from conftest import ROOT, SNAKEMAKE, TINY_MODELS, with_params
from pertflow.data.io import standardise
from pertflow.keys import dataset_keys
from pertflow.data.splits import HeldOut, choose_held_out, perturbation_labels

HABER_CONFIG = ROOT / "config" / "haber.yaml"
# The obs layout of pertpy's haber_2017_regions: condition and cell_label categorical, one batch
# per mouse, index {batch}_{barcode}_{condition}_{cell_label}; var_names are symbols.
HABER_CONDITIONS = {"Control": ["B1", "B2", "B3", "B4"], "Hpoly.Day3": ["B5", "B6"],
                    "Hpoly.Day10": ["B7", "B8"], "Salmonella": ["B9", "B10"]}
HABER_TYPES = ["Endocrine", "Enterocyte", "Enterocyte.Progenitor", "Goblet", "Stem", "TA",
               "TA.Early", "Tuft"]


def haber_like(cells_per_pair: int = 12, n_genes: int = 300, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    rows = [(rng.choice(batches), f"{i:014d}", condition, cell_type)
            for condition, batches in HABER_CONDITIONS.items() for cell_type in HABER_TYPES
            for i in range(cells_per_pair)]
    obs = pd.DataFrame(rows, columns=["batch", "barcode", "condition", "cell_label"])
    obs.index = ["_".join(row) for row in rows]
    for column in ("batch", "condition", "cell_label"):
        obs[column] = pd.Categorical(obs[column])
    genes = [f"Gene{i}" for i in range(n_genes - 3)] + ["mt-Co1", "Reg3b", "Lgr5"]
    counts = rng.poisson(2.0, (len(obs), n_genes)).astype(np.float32)
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))


def test_haber_config_keys_and_labels_fit_a_file_of_its_layout():
    spec = yaml.safe_load(HABER_CONFIG.read_text())["datasets"]["haber"]
    spec = {"min_cells": 10, "held_out": "all", **spec}
    adata = standardise(haber_like(), spec, "haber")
    # Hpoly.Day3 is not listed: dropped; both infections kept with the controls.
    assert set(adata.obs[spec["condition_key"]]) == {"Control", "Salmonella", "Hpoly.Day10"}
    labels = perturbation_labels(spec["perturbed"], spec["control"],
                                 adata.obs[spec["condition_key"]].unique(),
                                 spec["condition_key"], "haber")
    assert labels == ["Salmonella", "Hpoly.Day10"]
    keys = dataset_keys(spec, labels[0])
    splits = choose_held_out(adata, keys, labels, spec["held_out"], spec["min_cells"], "haber")
    assert splits == [HeldOut(p, t) for p in labels for t in HABER_TYPES]  # scGen's 16


@pytest.mark.workflow
def test_haber_config_plans_every_infection_and_cell_type(tmp_path):
    result = subprocess.run([*SNAKEMAKE, "-n", "--directory", str(tmp_path), "--configfile",
                             str(HABER_CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "download" in result.stdout and "held_out_groups" in result.stdout


@pytest.mark.workflow
@pytest.mark.slow
def test_three_labels_run_end_to_end_per_perturbation(tmp_path):
    config = with_params(yaml.safe_load((ROOT / "config" / "simulated_multi.yaml").read_text()),
                         TINY_MODELS)
    dataset = config["datasets"].pop("simulated_multi")
    dataset["source"]["simulate"].update(n_cells=900, n_genes=300, n_cell_types=3)
    dataset["hvg"]["n_top_genes"], dataset["qc"]["min_genes"] = 200, 50
    dataset["held_out"] = {"infected": ["B"], "stimulated": ["B", "Monocyte"]}
    config["datasets"] = {"multi": dataset}
    config["models"] = {name: config["models"][name]
                        for name in ("control", "similarity_shift", "scgen", "contrastivevi")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    results = tmp_path / "results" / "multi"
    targets = [f"{results.relative_to(tmp_path)}/{name}" for name in (
        "metrics_summary.csv", "summary.md", "figures/r2_mean_top100.png",
        "figures/perturbations/scgen.png")]
    result = subprocess.run([*SNAKEMAKE, *targets, "--directory", str(tmp_path),
                             "--configfile", str(tmp_path / "config.yaml")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-5000:]
    metrics = pd.read_csv(results / "metrics.csv")
    assert sorted(set(zip(metrics["perturbation"], metrics["group"]))) == [
        ("infected", "B"), ("stimulated", "B"), ("stimulated", "Monocyte")]
    assert len(metrics) == 3 * len(config["models"])
    # Each split's truth is that group's cells under that perturbation only.
    for perturbation, group in [("infected", "B"), ("stimulated", "Monocyte")]:
        truth = ad.read_h5ad(results / "splits" / perturbation / group / "truth.h5ad")
        assert set(truth.obs["condition"]) == {perturbation}
        assert set(truth.obs["cell_type"]) == {group}
        train = ad.read_h5ad(results / "splits" / perturbation / group / "train.h5ad")
        assert not set(truth.obs_names) & set(train.obs_names)
        # The group's cells under the other perturbation train (hide_other... false).
        other = "stimulated" if perturbation == "infected" else "infected"
        assert ((train.obs["cell_type"] == group) & (train.obs["condition"] == other)).any()
    by = metrics.groupby(["perturbation", "model"])["r2_mean_top100"].mean()
    for perturbation in ("infected", "stimulated"):
        assert by[perturbation, "similarity_shift"] > by[perturbation, "control"]
    summary = (results / "summary.md").read_text()
    assert "infected" in summary and "stimulated" in summary
    assert (results / "figures" / "perturbations" / "scgen.png").stat().st_size > 10_000
