"""The Perturb-seq screen analysis through the workflow: config/perturbseq.yaml with tiny settings
end to end, bad input failing before training and a bad screen param at parse time."""

from __future__ import annotations

import subprocess

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, SNAKEMAKE
from pertflow.models import Model
from pertflow.simulate.screen import simulate_screen

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

TINY = {"n_cells": 900, "n_genes": 500, "n_strong": 3, "n_weak": 2, "n_null": 2, "seed": 0}


def tiny_config(source: dict) -> dict:
    config = yaml.safe_load((ROOT / "config" / "perturbseq.yaml").read_text())
    spec = config["screens"].pop("perturbseq_sim")
    spec.update(source=source, min_cells=10, hvg={"n_top_genes": 300},
                params={"max_epochs": 4, "kl_warmup_epochs": 2, "n_hidden": 32},
                n_permutations=20, n_samples=2)
    return {"screens": {"tiny": spec}}


def run(tmp_path, config: dict, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([*SNAKEMAKE, *extra, "--directory", str(tmp_path), "--configfile",
                           str(path)], capture_output=True, text=True)


def test_perturbseq_config_runs_end_to_end(tmp_path):
    done = run(tmp_path, tiny_config({"simulate": TINY}))
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "results" / "tiny"
    table = pd.read_csv(out / "perturbations.csv")
    assert len(table) == TINY["n_strong"] + TINY["n_weak"] + TINY["n_null"]
    assert {"e_distance", "p_value", "q_value", "expression_t2", "expression_p_value",
            "expression_q_value", "responder_fraction", "mixscape_responder_fraction",
            "top_latent_degs"} <= set(table.columns)
    assert table["responder_fraction"].between(0, 1).all()
    cells = ad.read_h5ad(out / "latents.h5ad")
    assert {"X_salient", "X_background", "X_salient_cross_fitted", "X_pca"} <= set(cells.obsm)
    # Each fold's cells were embedded by the model that did not train on them.
    for k in (0, 1):
        model = Model.load(out / "models" / f"fold{k}")
        rows = cells.obs["screen_fold"].to_numpy() == k
        log = (out / "logs" / "screen_train" / f"fold{k}.log").read_text()
        assert f"those outside fold {k} of {cells.n_obs} cells" in log
        assert np.allclose(cells.obsm["X_salient_cross_fitted"][rows],
                           model.embed(cells[rows])["X_salient"], atol=1e-5)
    assert "phase" in cells.obs and "responder" in cells.obs
    for name in ("screen_umaps", "screen_ranked"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
    assert (out / "models" / "all").is_dir() and (out / "latent_de.csv").exists()


def test_no_control_cells_fails_before_training(tmp_path):
    raw = simulate_screen(**TINY)
    raw.obs["perturbation"] = raw.obs["perturbation"].astype(str).replace(
        {"non-targeting": "NT"})
    raw.write_h5ad(tmp_path / "raw.h5ad")
    done = run(tmp_path, tiny_config({"path": "raw.h5ad"}))
    assert done.returncode != 0
    log = (tmp_path / "results" / "tiny" / "logs" / "screen_prepare.log").read_text()
    assert "no control cells" in log and "non-targeting" in log
    assert not (tmp_path / "results" / "tiny" / "models").exists()
    assert np.all(raw.obs["perturbation"] != "non-targeting")


def test_a_misspelt_screen_param_fails_the_dry_run(tmp_path):
    config = tiny_config({"simulate": TINY})
    config["screens"]["tiny"]["params"]["max_epoch"] = 4
    done = run(tmp_path, config, "-n")
    assert done.returncode != 0
    assert ("config screens.tiny.params: unknown parameter(s) ['max_epoch'] for model "
            "'contrastivevi'") in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()
