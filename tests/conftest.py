"""Shared fixtures and helpers: a small preprocessed simulation, the real Kang data when it is
present, and what the workflow tests share (the Snakemake command, tiny model settings, the
default config, and the tiny config's reference run).

Tiers (markers declared in pyproject.toml): ``workflow`` runs Snakemake, ``slow`` trains models or
takes more than a few seconds, ``slurm`` needs a SLURM cluster; `make test-fast` skips all three."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KANG = ROOT.parent / "shared" / "data" / "kang2018_scgen_valid.h5ad"

from pertflow.keys import Keys
from pertflow.preprocess import preprocess
from pertflow.simulate import simulate

SIM_KEYS = Keys(condition="condition", control="control", perturbed="stimulated",
                group="cell_type")


@pytest.fixture(scope="session")
def keys() -> Keys:
    return SIM_KEYS


@pytest.fixture(scope="session")
def small_sim():
    """~1200 cells × 300 genes, counts in layers['counts'], log-normalised X."""
    return preprocess(simulate(n_cells=1200, n_genes=300, n_ifn_genes=30, n_cell_cycle_genes=20,
                               seed=1))


@pytest.fixture(scope="session")
def kang_path() -> Path:
    if not KANG.exists():
        pytest.skip(f"real data not present at {KANG}")
    return KANG


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models train fastest on one thread, and the test machine's cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# The workflow tests

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2"]
# Few-epoch, small-width settings: the integration tests check plumbing, not quality.
TINY_MODELS = {
    "scgen": {"max_epochs": 3, "n_hidden": 64, "n_latent": 8, "batch_size": 64,
              "patience": None, "device": "cpu"},
    "contrastivevi": {"max_epochs": 2, "n_hidden": 32, "batch_size": 64, "prediction": "sampled",
                      "device": "cpu"},
    "transformer": {"n_layers": 1, "d_model": 16, "n_heads": 2, "n_bins": 11, "max_genes": 64,
                    "epochs": 1, "batch_size": 64,
                    "device": "cpu"},
}


def with_params(config: dict, model_params: dict) -> dict:
    """``model_params`` (by model name) merged into the params of every entry of that model, so
    that `scgen`'s also reach an ablation entry such as `scgen_nonorm: {model: scgen}`."""
    for name, entry in config["models"].items():
        model = entry.get("model", name)
        if model in model_params:
            entry["params"] = {**entry.get("params", {}), **model_params[model]}
    return config


def default_config(**model_params) -> dict:
    """config/config.yaml with ``model_params`` merged in (see ``with_params``)."""
    return with_params(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                       model_params)


# The tiny config: one held-out group of a small simulation, two baselines and scGen. Its run is
# made once per session (``reference``) and shared by test_reproducible and test_resume.
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
TINY_METRICS = Path("results/sim/metrics.csv")


def tiny_command(workdir: Path) -> list[str]:
    """The command every tiny run uses, reruns after an interruption included."""
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    return [*SNAKEMAKE, str(TINY_METRICS), "--rerun-incomplete", "--directory", str(workdir),
            "--configfile", str(config)]


def run_tiny(workdir: Path) -> Path:
    result = subprocess.run(tiny_command(workdir), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the tiny config; made once per session, whichever module asks."""
    workdir = tmp_path_factory.getbasetemp() / "tiny_reference"
    if not (workdir / TINY_METRICS).exists():
        workdir.mkdir(exist_ok=True)
        run_tiny(workdir)
    return workdir
