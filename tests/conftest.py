"""Shared fixtures: a small preprocessed simulation, and the real Kang data when it is present."""

from __future__ import annotations

from pathlib import Path

import pytest

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
