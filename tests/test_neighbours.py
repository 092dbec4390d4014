"""Every latent UMAP (the benchmark's and the screen's) starts from scanpy's neighbour graph; above
4,096 cells scanpy hands it to pynndescent, whose 0.7.0 returns a `csr_array` that scanpy 1.11.5
cannot read (`'csr_array' object has no attribute 'getnnz'`). requirements.txt and envs/ pin
pynndescent 0.6.0; this graph at 20,000 cells fails again if the pins drift back."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

pytestmark = pytest.mark.slow


def test_neighbour_graph_of_20k_cells():
    n_cells, k = 20_000, 15
    latent = np.random.default_rng(0).normal(size=(n_cells, 10)).astype(np.float32)
    view = ad.AnnData(obs={"cell": np.arange(n_cells).astype(str)}, obsm={"latent": latent})
    sc.pp.neighbors(view, use_rep="latent", n_neighbors=k, random_state=0)
    distances = view.obsp["distances"]
    assert distances.shape == (n_cells, n_cells)
    assert (np.diff(distances.indptr) >= k - 1).all()  # every cell has its neighbours
    assert np.isfinite(distances.data).all()
    assert view.obsp["connectivities"].shape == (n_cells, n_cells)
