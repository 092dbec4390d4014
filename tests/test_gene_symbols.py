"""A dataset named by gene IDs (Ensembl) with symbols in a var column: `gene_symbols:` gives the
names used for mito QC, labels and cell-cycle genes, IDs stay the index; a QC rule that matches no
gene warns; and every model's negative predictions are clipped at 0 unless `clip_negative: false`.
"""

from __future__ import annotations

import numpy as np
import pytest

from pertflow.data.io import source_path, standardise
from pertflow.errors import DataError
from pertflow.models.baselines import MeanShift
from pertflow.data.preprocess import SYMBOL, cell_cycle_genes, gene_symbols, preprocess, score_cell_cycle
from pertflow.simulate.experiment import simulate

SPEC = {"condition_key": "condition", "control": "control", "perturbed": "stimulated",
        "group_key": "cell_type", "counts": "X"}
QC = {"max_mito_fraction": 0.05}


@pytest.fixture(scope="module")
def by_id():
    """A simulation whose var_names are Ensembl-like IDs and whose symbols are var['symbol']."""
    adata = simulate(n_cells=400, n_genes=300, n_cell_types=3, n_mito_genes=10, seed=0)
    adata.var["symbol"] = adata.var_names.to_numpy()
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    return adata


def mito_fraction(adata):
    counts = adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X
    mt = gene_symbols(adata).str.startswith("MT-")
    return counts[:, mt].sum(1) / counts.sum(1)


def test_gene_symbols_name_the_mito_genes_and_ids_stay_the_index(by_id):
    assert (mito_fraction(standardise(by_id, {**SPEC, "gene_symbols": "symbol"}, "d")) > 0.05).any()
    adata = preprocess(standardise(by_id, {**SPEC, "gene_symbols": "symbol"}, "d"), qc=QC)
    assert adata.var_names.str.startswith("ENSG").all()
    assert gene_symbols(adata)[:2].tolist() == ["MT-0", "MT-1"]
    assert (adata.obs["pct_counts_mt"] <= 5.0).all() and adata.uns["qc_warnings"] == []


def test_a_qc_rule_that_matches_no_gene_warns(by_id, caplog):
    adata = preprocess(standardise(by_id, SPEC, "d"), qc=QC)
    assert adata.n_obs == by_id.n_obs  # nothing filtered: no ID starts with MT-
    [warning] = adata.uns["qc_warnings"]
    assert "max_mito_fraction=0.05 removed no cell" in warning and "gene_symbols" in warning
    assert warning in caplog.text
    assert preprocess(standardise(by_id, SPEC, "d")).uns["qc_warnings"] == []  # rule unset


def test_missing_symbol_column_names_the_dataset_and_the_columns(by_id):
    with pytest.raises(DataError, match=r"dataset 'd': var column 'gene_name' \(gene_symbols\) "
                                        r"not found. Available var columns: symbol"):
        standardise(by_id, {**SPEC, "gene_symbols": "gene_name"}, "d")


def test_symbols_label_plots_and_find_cell_cycle_genes(by_id):
    from pertflow.benchmark import figures

    adata = standardise(by_id, {**SPEC, "gene_symbols": "symbol"}, "d")
    assert SYMBOL in adata.var
    adata = preprocess(adata)
    genes = adata.var_names[10:13].tolist()  # ISG0..2 by symbol
    fig = figures.expression_scatter(adata, adata, genes, "t", n_labels=3)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert {"ISG0", "ISG1", "ISG2"} <= set(labels) and not any("ENSG" in t for t in labels)
    fig = figures.top_deg_violins(adata, adata, {}, genes, {}, "t")
    assert [ax.get_title() for ax in fig.axes[:3]] == ["ISG0", "ISG1", "ISG2"]
    # Cell-cycle genes are matched by symbol (the simulation's are not Tirosh's: none match).
    renamed = adata.copy()
    listed = cell_cycle_genes()
    s, g2m = (listed.loc[listed["phase"] == p, "gene"].tolist()[:40] for p in ("S", "G2M"))
    renamed.var[SYMBOL] = ["x"] * (renamed.n_vars - 120) + s + g2m + [f"y{i}" for i in range(40)]
    assert score_cell_cycle(renamed, seed=0, required=False)
    assert set(renamed.obs["phase"]) <= {"G1", "S", "G2M"}
    assert not score_cell_cycle(adata, seed=0, required=False)
    with pytest.raises(DataError, match="gene_symbols"):
        score_cell_cycle(adata, seed=0)


def test_relative_source_path_error_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"source file {tmp_path}/data/x.h5ad not found"):
        source_path("data/x.h5ad", "d")
    (tmp_path / "x.h5ad").touch()
    assert source_path("x.h5ad", "d") == tmp_path / "x.h5ad"


@pytest.mark.parametrize("clip", [True, False])
def test_negative_predictions_are_clipped_unless_the_param_keeps_them(small_sim, keys, clip):
    control = small_sim[(small_sim.obs[keys.condition] == keys.control).to_numpy()][:20].copy()
    model = MeanShift(keys)
    model.params = MeanShift.check_params({} if clip else {"clip_negative": False})
    assert model.params["clip_negative"] is clip
    raw = np.full(control.shape, -0.5, dtype=np.float32)
    raw[:, 0] = 1.0
    X = model._prediction(control, raw.copy()).X
    assert X.min() == (0.0 if clip else -0.5) and (X[:, 0] == 1.0).all()
    assert model.params["clip_negative"] is clip


def test_every_model_takes_clip_negative():
    from pertflow.models.base import _REGISTRY, _import_model_modules

    _import_model_modules()
    for cls in _REGISTRY.values():
        assert cls.defaults["clip_negative"] is True
        assert cls.check_params({"clip_negative": False})["clip_negative"] is False
