import hashlib
import http.server
import threading
from functools import partial

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pertflow.data.io import download, perturbed_mean, read_h5ad, standardise
from pertflow.errors import ConfigError, DataError, DownloadError
from pertflow.data.preprocess import preprocess, recover_counts
from pertflow.simulate.experiment import simulate

SPEC = {"condition_key": "condition", "control": "control", "perturbed": "stimulated",
        "group_key": "cell_type", "counts": "X"}


def test_recover_counts_is_exact():
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(0.3, 3.0, (200, 150))).astype(np.float32)
    counts[:, 0] += 1  # every cell has a one somewhere: its smallest non-zero count
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    recovered = recover_counts(sp.csr_matrix(lognorm))
    assert np.array_equal(recovered.toarray(), counts)


def test_recover_refuses_data_that_are_not_normalised_counts():
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="cannot recover integer counts"):
        recover_counts(sp.csr_matrix(rng.normal(2, 1, (20, 30)).clip(0.1)))


def test_simulation_is_deterministic_and_holds_its_truth():
    a, b = simulate(n_cells=600, n_genes=300, seed=3), simulate(n_cells=600, n_genes=300, seed=3)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    assert (simulate(n_cells=600, n_genes=300, seed=4).X != a.X).nnz > 0
    truth = a.uns["simulation"]
    lfc = truth["true_response_lfc"]
    assert lfc.shape == (len(truth["cell_types"]), a.n_vars)
    assert np.all(a.X.data == np.round(a.X.data))
    # The interferon module goes up everywhere but with type-specific strength; outside it, types
    # of one lineage share a response programme (yet each has genes of its own) and types of
    # different lineages respond in unrelated genes: one shared shift cannot be right for all.
    ifn = a.var_names.isin(truth["ifn_genes"])
    assert np.all(lfc[:, ifn].mean(1) > 0) and np.ptp(lfc[:, ifn].mean(1)) > 0.5
    lineages = np.asarray(truth["lineages"])
    same = lineages[:, None] == lineages[None, :]
    corr = np.corrcoef(lfc[:, ~ifn])[np.triu_indices(len(lfc), 1)]
    same = same[np.triu_indices(len(lfc), 1)]
    assert corr[~same].max() < 0.5 and 0.3 < corr[same].min() and corr[same].max() < 0.95
    # Observed stimulated-vs-control changes follow the truth.
    X = a.X.toarray() / a.X.toarray().sum(1, keepdims=True)
    t0 = (a.obs["cell_type"] == truth["cell_types"][0]).to_numpy()
    stim = (a.obs["condition"] == "stimulated").to_numpy()
    observed = np.log(X[t0 & stim].mean(0) + 1e-6) - np.log(X[t0 & ~stim].mean(0) + 1e-6)
    assert np.corrcoef(observed[ifn], lfc[0, ifn])[0, 1] > 0.5


def test_standardise_checks_keys_labels_and_counts():
    adata = simulate(n_cells=300, n_genes=200)
    with pytest.raises(DataError, match="obs column 'celltype'"):
        standardise(adata, {**SPEC, "group_key": "celltype"}, "sim")
    with pytest.raises(DataError, match="perturbed label 'IFN'"):
        standardise(adata, {**SPEC, "perturbed": "IFN"}, "sim")
    lognorm = adata.copy()
    lognorm.X = lognorm.X.astype(np.float32) * 0.5 + sp.csr_matrix(lognorm.X > 0) * 0.25
    with pytest.raises(DataError, match="not integer"):
        standardise(lognorm, SPEC, "sim")
    broken = adata.copy()
    broken.X = broken.X.toarray()
    broken.X[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        standardise(broken, SPEC, "sim")
    renamed = adata.copy()
    renamed.obs = renamed.obs.rename(columns={"cell_type": "label"})
    out = standardise(renamed, {**SPEC, "rename": {"obs": {"label": "cell_type"},
                                                   "labels": {"condition": {"stimulated": "IFN"}}},
                                "perturbed": "IFN"}, "sim")
    assert set(out.obs["condition"]) == {"control", "IFN"}


def test_preprocess_keeps_counts_and_log_normalises():
    adata = preprocess(simulate(n_cells=400, n_genes=300), qc={"max_mito_fraction": 0.2},
                       hvg={"n_top_genes": 100})
    assert adata.n_vars == 100
    counts = adata.layers["counts"].toarray()
    assert np.all(counts == np.round(counts))
    assert np.allclose(np.expm1(adata.X.toarray()).sum(1)[:5] > 0, True)


def test_preprocess_filters_genes_by_min_cells_per_gene():
    raw = simulate(n_cells=400, n_genes=300)
    detected_in = (raw.X > 0).sum(axis=0).A1
    threshold = int(np.sort(detected_in)[50]) + 1  # some genes fall below it
    kept = preprocess(raw, qc={"min_cells_per_gene": threshold}).var_names
    assert 0 < raw.n_vars - len(kept) and set(kept) <= set(raw.var_names[detected_in >= threshold])
    assert preprocess(raw).n_vars == raw.n_vars  # the schema's qc defaults filter nothing


def test_preprocess_refuses_unknown_options():
    raw = simulate(n_cells=200, n_genes=200)
    with pytest.raises(ConfigError, match="qc: unknown option 'min_cells'; known: min_genes, "
                                          "min_cells_per_gene"):
        preprocess(raw, qc={"min_cells": 3})
    with pytest.raises(ConfigError, match="hvg: unknown option 'n_top'; known: n_top_genes"):
        preprocess(raw, hvg={"n_top": 10})


def test_perturbed_mean_reads_only_perturbed_cells_in_chunks(tmp_path, keys):
    rng = np.random.default_rng(4)
    X = rng.gamma(2.0, 1.0, (11, 4)).astype(np.float32)
    condition = ["stimulated", "control"] * 5 + ["stimulated"]
    cells = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame({"condition": condition},
                                                           index=[f"c{i}" for i in range(11)]),
                       var=pd.DataFrame(index=["a", "b", "c", "d"]))
    cells.write_h5ad(tmp_path / "train.h5ad")
    genes = pd.Index(["d", "a"])
    mean = perturbed_mean(tmp_path / "train.h5ad", keys, genes, chunk_size=2)
    perturbed = np.array(condition) == "stimulated"
    np.testing.assert_allclose(mean, X[perturbed][:, [3, 0]].mean(0), rtol=1e-6)


@pytest.fixture
def http_root(tmp_path):
    payload = b"pertflow" * 1000
    (tmp_path / "file.bin").write_bytes(payload)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hashlib.sha256(payload).hexdigest()
    server.shutdown()


def test_download_verifies_checksum(http_root, tmp_path):
    url, sha = http_root
    dest = tmp_path / "out" / "file.bin"
    assert download(f"{url}/file.bin", dest, sha256=sha, retries=0) == sha
    assert dest.read_bytes() == b"pertflow" * 1000
    bad = tmp_path / "out" / "bad.bin"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(f"{url}/file.bin", bad, sha256="0" * 64, retries=0)
    assert not bad.exists() and list((tmp_path / "out").iterdir()) == [dest]
    with pytest.raises(DownloadError, match="HTTP 404"):  # not retried: fails at once
        download(f"{url}/missing.bin", tmp_path / "out" / "missing.bin", sha256=None,
                 retries=5)


def test_read_h5ad_names_a_broken_file(tmp_path):
    path = tmp_path / "broken.h5ad"
    path.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="broken.h5ad"):
        read_h5ad(path)
