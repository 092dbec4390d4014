"""Getting a dataset: download with checksum, simulate, or read a local file; then bring it to the
workflow's standard form (renamed keys and labels, raw counts in ``X``) and check it early. Also
the reads of workflow files too large to load whole (``perturbed_mean``)."""

from __future__ import annotations

import hashlib
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pertflow.errors import DataError, DownloadError
from pertflow.keys import Keys, dataset_keys
from pertflow.data.preprocess import SYMBOL, check_counts, recover_counts
from pertflow.data.splits import labelled_cells, perturbation_labels
from pertflow.utils import atomic_path, dense

log = logging.getLogger(__name__)


def download(url: str, dest: str | Path, sha256: str | None, retries: int,
             timeout: float = 60.0) -> str:
    """Stream ``url`` (http, https or file) to ``dest`` through a temporary file, verify the sha256
    when given, then rename atomically. Returns the observed sha256. On a mismatch nothing is left
    at ``dest``."""
    last_error: Exception | None = None
    for attempt in range(1, retries + 2):
        try:
            with atomic_path(dest) as tmp:
                digest = hashlib.sha256()
                with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        digest.update(chunk)
                        out.write(chunk)
                observed = digest.hexdigest()
                log.info("downloaded %s (%d bytes), sha256 %s", url, Path(tmp).stat().st_size,
                         observed)
                if sha256 and observed != sha256.lower():
                    raise DownloadError(
                        f"checksum mismatch for {url}: expected sha256 {sha256}, got {observed}. "
                        "The file changed upstream or is corrupt; check the URL, or update "
                        "`sha256:` in the dataset's source if the new file is intended.")
            return observed
        except DownloadError:
            raise
        except Exception as error:  # network and server errors are retried
            if isinstance(error, urllib.error.HTTPError) and error.code < 500:
                # a missing or forbidden file does not come back on retry
                raise DownloadError(f"could not download {url}: HTTP {error.code} {error.reason}. "
                                    "Check the URL in the dataset's `source:`.") from error
            last_error = error
            log.warning("download attempt %d of %s failed: %s", attempt, url, error)
            if attempt <= retries:
                time.sleep(min(2 ** attempt, 30))
    raise DownloadError(f"could not download {url} after {retries + 1} attempts: {last_error}. "
                        "Check the URL and network, or point `source: {path: ...}` at a local copy.")


def read_h5ad(path: str | Path) -> ad.AnnData:
    """Read an h5ad with an error that names the file when it is missing, truncated or not HDF5."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path.absolute()}: file not found; fix `source: path:` in the dataset "
                        "config (a relative path is relative to the working directory).")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5/h5ad file (wrong format or a broken download); "
                        "point `source:` at an .h5ad written by anndata, or download it again.")
    try:
        return ad.read_h5ad(path)
    except Exception as error:
        raise DataError(f"{path}: cannot be read as AnnData, the file is truncated or corrupt "
                        f"({error}); download it again or re-export it with anndata.") from error


def _require_column(adata: ad.AnnData, key: str, what: str, name: str) -> None:
    if key not in adata.obs:
        raise DataError(
            f"dataset '{name}': obs column '{key}' ({what}) not found. Available columns: "
            f"{', '.join(map(str, adata.obs.columns))}. Fix `{what}` or add it via `rename:`.")


def source_path(path: str | Path, name: str) -> Path:
    """The absolute path of a dataset's ``source: path:`` (relative to the working directory,
    Snakemake's --directory), or a DataError naming the absolute path tried."""
    tried = Path(path).expanduser().absolute()
    if not tried.exists():
        raise DataError(
            f"dataset '{name}': source file {tried} not found (`source: path: {path}`; a relative "
            f"path is relative to the working directory, {Path.cwd()}, which is Snakemake's "
            "--directory). Fix the path or give an absolute one.")
    return tried


def _set_gene_symbols(adata: ad.AnnData, column: str | None, name: str) -> None:
    """Copy the dataset's ``gene_symbols`` var column to ``var[SYMBOL]`` (IDs stay var_names)."""
    if not column:
        if SYMBOL in adata.var:  # only a configured column names the genes for people
            log.info("dataset '%s': var column '%s' ignored (set `gene_symbols:` to use it)",
                     name, SYMBOL)
            del adata.var[SYMBOL]
        return
    if column not in adata.var:
        raise DataError(
            f"dataset '{name}': var column '{column}' (gene_symbols) not found. Available var "
            f"columns: {', '.join(map(str, adata.var.columns)) or 'none'} (var_names, the IDs, "
            f"look like {', '.join(map(str, adata.var_names[:3]))}). Fix `gene_symbols:` or "
            "remove it to label genes by var_names.")
    symbols = adata.var[column].astype(object)
    adata.var[SYMBOL] = symbols.where(symbols.notna(), "").astype(str).to_numpy()
    log.info("dataset '%s': gene symbols from var['%s'] (e.g. %s for %s)", name, column,
             ", ".join(adata.var[SYMBOL][:3]), ", ".join(map(str, adata.var_names[:3])))


def standardise(adata: ad.AnnData, spec: dict, name: str) -> ad.AnnData:
    """Apply the dataset spec (a validated dataset entry, or its PREPROCESS_KEYS): rename obs
    columns and labels, take gene symbols from the ``gene_symbols`` var column, put raw counts
    into ``X`` and check that the experiment is usable (conditions present, finite, unique
    genes). Which groups can be held out is the held_out_groups checkpoint's check, after QC."""
    adata = adata.copy()
    _set_gene_symbols(adata, spec.get("gene_symbols"), name)
    rename = spec.get("rename") or {}
    adata.obs = adata.obs.rename(columns=rename.get("obs", {}))
    for column, mapping in (rename.get("labels") or {}).items():
        _require_column(adata, column, f"rename.labels.{column}", name)
        adata.obs[column] = adata.obs[column].astype(str).replace(mapping)
    condition, group = spec["condition_key"], spec["group_key"]
    _require_column(adata, condition, "condition_key", name)
    _require_column(adata, group, "group_key", name)
    for key in (condition, group):
        adata.obs[key] = pd.Categorical(adata.obs[key].astype(str))
    present = set(adata.obs[condition].cat.categories)
    if len(present) == 1:
        raise DataError(
            f"dataset '{name}': only one condition ('{present.pop()}') in obs['{condition}']; "
            "the benchmark needs control and perturbed cells. Point `condition_key:` at the "
            "column that holds both, or use a file with both conditions.")
    if spec["control"] not in present:
        raise DataError(
            f"dataset '{name}': control label '{spec['control']}' not found in "
            f"obs['{condition}'] (values: {', '.join(sorted(present))}). Fix `control:` or map "
            f"it with `rename: labels: {condition}:`.")
    perturbations = perturbation_labels(spec["perturbed"], spec["control"], present, condition,
                                        name)
    keys = dataset_keys(spec, perturbations[0])
    dropped = sorted(present - {spec["control"], *perturbations})
    if dropped:
        log.info("dataset '%s': dropping the cells labelled %s in obs['%s'] (not in "
                 "`perturbed:`)", name, dropped, condition)
    adata = adata[labelled_cells(adata, keys, perturbations)].copy()
    adata.obs[condition] = adata.obs[condition].cat.remove_unused_categories()
    if not adata.var_names.is_unique:
        dups = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise DataError(f"dataset '{name}': duplicated gene names in var_names, e.g. {dups}; "
                        "make them unique (anndata's var_names_make_unique) before use.")
    X = adata.X
    data = X.data if sp.issparse(X) else np.asarray(X)
    if not np.all(np.isfinite(data)):
        raise DataError(f"dataset '{name}': X contains NaN or infinite values; clean the matrix.")

    counts = spec["counts"]
    if counts == "recover":
        adata.X = recover_counts(X, where=f"dataset '{name}' X (counts: recover)")
    elif isinstance(counts, dict):
        layer = counts["layer"]
        if layer not in adata.layers:
            raise DataError(f"dataset '{name}': layer '{layer}' (counts: layer) not found; "
                            f"available layers: {list(adata.layers) or 'none'}.")
        adata.X = adata.layers[layer]
    where = f"dataset '{name}' counts ({counts if isinstance(counts, str) else counts['layer']})"
    check_counts(adata.X, where)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.layers.clear()
    return adata


def perturbed_mean(path: str, keys: Keys, genes: pd.Index, chunk_size: int = 5000) -> np.ndarray:
    """Per-gene mean of the perturbed cells in the h5ad file at ``path`` (a split's training
    cells), in the order of ``genes``; read backed, ``chunk_size`` rows at a time, so the
    training matrix is never held in memory whole."""
    cells = ad.read_h5ad(path, backed="r")
    try:
        rows = np.flatnonzero((cells.obs[keys.condition] == keys.perturbed).to_numpy())
        columns = cells.var_names.get_indexer(genes)
        if len(rows) == 0 or (columns < 0).any():
            raise DataError(f"{path}: no perturbed training cells or genes missing from the "
                            "truth's; rerun the split (delete the split's directory).")
        total = np.zeros(len(genes))
        for start in range(0, len(rows), chunk_size):
            block = dense(cells[rows[start:start + chunk_size]].X).astype(np.float64)
            total += block[:, columns].sum(axis=0)
    finally:
        cells.file.close()
    return total / len(rows)
