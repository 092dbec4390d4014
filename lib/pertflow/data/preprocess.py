"""QC, normalisation and HVG selection with scanpy; raw counts kept in ``layers['counts']``.
The defaults of ``qc`` and ``hvg`` are the config schema's (pertflow.config.schema_defaults)."""

from __future__ import annotations

import logging
from importlib.resources import files

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from pertflow.config import schema_defaults
from pertflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# X is log1p of counts normalised to this total per cell.
TARGET_SUM = 1e4
# The var column that holds the genes' symbols when a dataset names its genes by ID (its
# `gene_symbols:` column is copied here): labels, mito detection and cell-cycle genes use it.
SYMBOL = "gene_symbol"


def gene_symbols(adata: ad.AnnData) -> pd.Index:
    """The genes' names for people and for gene lists (mito prefix, cell-cycle genes): the
    ``var[SYMBOL]`` column when the dataset has one, else ``var_names``. Same order as var_names;
    a missing symbol falls back to the gene's ID."""
    if SYMBOL not in adata.var:
        return pd.Index(adata.var_names.astype(str))
    symbols = adata.var[SYMBOL].astype(object)
    return pd.Index(symbols.where(symbols.notna() & (symbols.astype(str) != ""),
                                  pd.Series(adata.var_names, index=adata.var_names)).astype(str))


def _options(given: dict | None, what: str) -> dict:
    """``given`` over the schema's defaults of a dataset's ``what`` (qc or hvg); an unknown name
    is an error that names the known ones."""
    defaults = schema_defaults("dataset", what)
    for key in given or {}:
        if key not in defaults:
            raise ConfigError(f"{what}: unknown option '{key}'; known: {', '.join(defaults)}.")
    return {**defaults, **(given or {})}


def recover_counts(X, where: str = "X") -> sp.csr_matrix:
    """Exact integer counts from log1p(size-normalised counts): per cell,
    round(expm1(x) / min_nonzero(expm1(x))). Refuses input where the ratio is not integral."""
    X = sp.csr_matrix(X, dtype=np.float64)
    with np.errstate(over="ignore"):  # raw counts overflow: refused below
        values = np.expm1(X.data)
    if np.any(values < 0):
        raise DataError(f"{where}: negative values cannot be log1p-normalised counts; "
                        "use `counts: X` or a counts layer instead of `recover`.")
    if not np.all(np.isfinite(values)):
        raise DataError(f"{where}: values up to {X.data.max():.4g} are far too large for "
                        "log1p-normalised counts; these look like raw counts. Use `counts: X` "
                        "or a counts layer instead of `recover`.")
    row = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    positive = values > 0
    minimum = np.full(X.shape[0], np.inf)
    np.minimum.at(minimum, row[positive], values[positive])
    ratio = values / minimum[row]
    counts = np.rint(ratio)
    worst = np.max(np.abs(ratio - counts) / np.maximum(counts, 1.0), initial=0.0)
    if worst > 1e-3:
        raise DataError(
            f"{where}: cannot recover integer counts (relative rounding error up to {worst:.3g}). "
            "`recover` needs log1p of size-normalised counts where each cell's smallest non-zero "
            "value is one count; give raw counts with `counts: X` or `counts: {layer: NAME}`.")
    out = sp.csr_matrix((counts.astype(np.float32), X.indices, X.indptr), shape=X.shape)
    out.eliminate_zeros()
    return out


def check_counts(X, where: str) -> None:
    data = X.data if sp.issparse(X) else np.asarray(X)
    if not np.all(np.isfinite(data)):
        raise DataError(f"{where}: contains NaN or infinite values; clean the input matrix.")
    if np.any(data < 0):
        raise DataError(f"{where}: contains negative values, so it is not raw counts. "
                        "Point `counts:` at raw counts, or use `recover` for log-normalised X.")
    if np.any(data != np.round(data)):
        raise DataError(f"{where}: is not integer, so it is not raw counts. Point `counts:` at a "
                        "layer of raw counts, or use `counts: recover` for log1p-normalised X.")


def preprocess(adata: ad.AnnData, qc: dict | None = None, hvg: dict | None = None,
               target_sum: float | None = TARGET_SUM) -> ad.AnnData:
    """``adata.X`` holds raw counts on entry. Returns QC-filtered cells, counts in
    ``layers['counts']``, log1p(normalize_total) in ``X`` and, if asked, only the HVGs. ``qc``
    and ``hvg`` are a dataset's validated ``qc:`` and ``hvg:``; a key they leave out takes the
    config schema's default (filtering nothing, keeping every gene). Mitochondrial genes are those
    whose symbol (``gene_symbols``) starts with ``mito_prefix``. A QC rule that matches no gene
    is logged as a warning and listed in ``uns['qc_warnings']``."""
    qc = _options(qc, "qc")
    hvg = _options(hvg, "hvg")
    adata = adata.copy()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    n0, g0 = adata.shape
    adata.var["mt"] = gene_symbols(adata).str.startswith(qc["mito_prefix"])
    warnings = []
    if qc["max_mito_fraction"] < 1.0 and not adata.var["mt"].any():
        named_by = f"var['{SYMBOL}']" if SYMBOL in adata.var else "var_names"
        warnings.append(
            f"qc.max_mito_fraction={qc['max_mito_fraction']} removed no cell: no gene name in "
            f"{named_by} starts with mito_prefix '{qc['mito_prefix']}' (e.g. "
            f"{', '.join(gene_symbols(adata)[:3])}). Set the dataset's `gene_symbols:` to the var "
            "column of gene symbols, or fix `qc.mito_prefix` (e.g. 'mt-' for mouse).")
    for warning in warnings:
        log.warning("%s", warning)
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    keep = adata.obs["n_genes_by_counts"].to_numpy() >= qc["min_genes"]
    keep &= adata.obs["pct_counts_mt"].to_numpy() <= 100.0 * qc["max_mito_fraction"]
    keep &= adata.obs["total_counts"].to_numpy() > 0
    adata = adata[keep].copy()
    if qc["min_cells_per_gene"]:
        sc.pp.filter_genes(adata, min_cells=qc["min_cells_per_gene"])
    log.info("QC kept %d of %d cells and %d of %d genes", adata.n_obs, n0, adata.n_vars, g0)
    if adata.n_obs == 0:
        raise DataError("QC removed every cell; relax `qc:` (min_genes, max_mito_fraction).")

    adata.layers["counts"] = adata.X.copy()
    if hvg["n_top_genes"] and hvg["n_top_genes"] < adata.n_vars:
        flavor = hvg["flavor"]
        if flavor == "seurat_v3":  # seurat_v3 ranks genes on raw counts
            sc.pp.highly_variable_genes(adata, n_top_genes=hvg["n_top_genes"], flavor=flavor,
                                        layer="counts")
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    if hvg["n_top_genes"] and hvg["n_top_genes"] < adata.n_vars:
        if hvg["flavor"] != "seurat_v3":
            sc.pp.highly_variable_genes(adata, n_top_genes=hvg["n_top_genes"], flavor=hvg["flavor"])
        adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
        log.info("kept %d highly variable genes (%s)", adata.n_vars, hvg["flavor"])
    adata.uns.pop("log1p", None)
    adata.uns["qc_warnings"] = warnings
    return adata


def cell_cycle_genes() -> pd.DataFrame:
    """The shipped Tirosh et al. 2016 S and G2/M gene lists (columns gene, phase), with their
    source in the file's leading ``#`` lines."""
    with files("pertflow").joinpath("resources", "cell_cycle_genes.csv").open() as handle:
        return pd.read_csv(handle, comment="#")


def score_cell_cycle(adata: ad.AnnData, seed: int = 0, min_genes: int = 10,
                     required: bool = True) -> bool:
    """scanpy's ``tl.score_genes_cell_cycle`` with the shipped lists, matched to the genes'
    symbols (see gene_symbols) ignoring case (mouse symbols are capitalised). Needs
    log-normalised ``X``. Adds obs ``S_score``, ``G2M_score``, ``phase`` and the genes used in
    ``uns['cell_cycle']``, and returns True; with fewer than ``min_genes`` of a phase's genes
    present it raises, or returns False when not ``required``."""
    X = adata.X
    sample = (X.data if sp.issparse(X) else np.asarray(X).ravel())[:100_000]
    if sample.size and np.all(sample == np.round(sample)):
        raise DataError("cell-cycle scoring needs log-normalised X, and X holds integer counts; "
                        "normalise first (pertflow.data.preprocess.preprocess).")
    by_upper = {symbol.upper(): name for symbol, name in zip(gene_symbols(adata), adata.var_names)}
    genes = cell_cycle_genes()
    used = {}
    for phase in ("S", "G2M"):
        listed = genes.loc[genes["phase"] == phase, "gene"]
        used[phase] = [by_upper[g] for g in listed if g in by_upper]
        if len(used[phase]) < min_genes:
            if not required:
                return False
            raise DataError(
                f"only {len(used[phase])} of the {len(listed)} {phase}-phase genes are in the "
                f"data (at least {min_genes} needed): score the cell cycle before HVG selection, "
                "and check that the genes are named by symbol (or set the dataset's "
                "gene_symbols: to its var column of symbols).")
    sc.tl.score_genes_cell_cycle(adata, s_genes=used["S"], g2m_genes=used["G2M"],
                                 random_state=seed)
    adata.uns["cell_cycle"] = {"s_genes": np.asarray(used["S"]),
                               "g2m_genes": np.asarray(used["G2M"])}
    return True
