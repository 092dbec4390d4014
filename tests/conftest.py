"""Shared fixtures and helpers: a small preprocessed simulation, the real Kang data when it is
present, and what the workflow tests share (the Snakemake command, tiny model settings, the
default config, and the tiny config's reference run).

Tiers (markers declared in pyproject.toml): ``workflow`` runs Snakemake, ``slow`` trains models or
takes more than a few seconds, ``slurm`` needs a SLURM cluster; `make test-fast` skips all three."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
KANG = ROOT.parent / "shared" / "data" / "kang2018_scgen_valid.h5ad"

from pertflow.keys import Keys
from pertflow.data.preprocess import preprocess
from pertflow.simulate.experiment import simulate

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

# Under pytest-xdist each worker is one of the machine's busy processes: its Snakemake gets one
# core, so that two workers' runs do not oversubscribe a 2-core machine.
CORES = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", CORES]
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
    """An uninterrupted run of the tiny config; made once per session, whichever module asks,
    and shared by pytest-xdist's workers (each has a basetemp of its own below the shared one)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    workdir = root / "tiny_reference"
    with FileLock(f"{workdir}.lock"):
        if not (workdir / TINY_METRICS).exists():
            workdir.mkdir(exist_ok=True)
            run_tiny(workdir)
    return workdir


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
