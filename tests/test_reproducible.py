"""Two runs of the same config on CPU give byte-identical metrics, and every run records its seed
and the versions that produced it. The tiny config and its first run are shared with test_resume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anndata as ad
import pytest
import yaml

from test_workflow import SNAKEMAKE, TINY_MODELS

GROUP = "T-helper"
TINY_CONFIG = {
    "seeds": [0],
    "n_top_degs": 20,
    "datasets": {"sim": {
        "source": {"simulate": {"n_cells": 600, "n_genes": 300, "n_cell_types": 3,
                                "n_ifn_genes": 30, "n_cell_cycle_genes": 20, "seed": 0}},
        "condition_key": "condition", "control": "control", "perturbed": "stimulated",
        "group_key": "cell_type", "held_out": [GROUP], "min_cells": 10}},
    # More epochs than TINY_MODELS, so that test_resume can interrupt training.
    "models": {"control": {}, "mean_shift": {},
               "scgen": {"params": {**TINY_MODELS["scgen"], "max_epochs": 8}}},
}
METRICS = Path("results/sim/metrics.csv")
VERSIONS = ["python", "numpy", "scanpy", "anndata", "torch", "pertflow"]


def tiny_command(workdir: Path) -> list[str]:
    """The command every tiny run uses, reruns after an interruption included."""
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    return [*SNAKEMAKE, str(METRICS), "--rerun-incomplete", "--directory", str(workdir),
            "--configfile", str(config)]


def run_tiny(workdir: Path) -> Path:
    result = subprocess.run(tiny_command(workdir), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the tiny config; made once per session, whichever module asks."""
    workdir = tmp_path_factory.getbasetemp() / "tiny_reference"
    if not (workdir / METRICS).exists():
        workdir.mkdir(exist_ok=True)
        run_tiny(workdir)
    return workdir


def test_two_runs_give_byte_identical_metrics(reference, tmp_path):
    again = run_tiny(tmp_path)
    assert (again / METRICS).read_bytes() == (reference / METRICS).read_bytes()


def test_runs_record_seed_and_versions(reference):
    run = reference / "results" / "sim" / "runs" / "scgen" / GROUP / "seed0"
    saved = json.loads((run / "model" / "model.json").read_text())
    recorded = ad.read_h5ad(run / "prediction.h5ad").uns["pertflow"]
    for meta in (saved, recorded):
        assert meta["seed"] == 0 and meta["model"] == "scgen"
        assert set(VERSIONS) <= meta["versions"].keys()
    assert json.loads(recorded["params"]) == saved["params"]
    baseline = ad.read_h5ad(reference / "results" / "sim" / "runs" / "mean_shift" / GROUP / "seed0"
                            / "prediction.h5ad").uns["pertflow"]
    assert "torch" not in baseline["versions"]  # recorded only where the run imports it
