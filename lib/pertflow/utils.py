"""Small helpers shared by the library: dense views, seeded balancing, atomic writes, provenance,
Snakemake lock clean-up."""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess
import sys
from contextlib import contextmanager
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[2]
# Packages whose versions decide a run's numbers; torch and pyro only when the run imported them.
VERSIONED = ("numpy", "scipy", "pandas", "scikit-learn", "scanpy", "anndata", "h5py")
VERSIONED_IF_IMPORTED = {"torch": "torch", "pyro": "pyro-ppl"}


def dense(X) -> np.ndarray:
    """A dense float ndarray view of X (sparse matrices are densified)."""
    return np.asarray(X.toarray() if sp.issparse(X) else X)


def balanced_indices(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """scGen's balancing: resample (with replacement) every group to the largest group's size."""
    labels, counts = np.unique(groups, return_counts=True)
    target = counts.max()
    picks = [rng.choice(np.flatnonzero(groups == label), size=target, replace=True)
             for label in labels]
    return np.concatenate(picks)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds,
    so an interrupted or failed write never leaves a half-written output behind. The temporary
    name is fixed per output (``.NAME.part.SUFFIX``): a rerun after a kill (which runs no cleanup)
    overwrites the leftover and renames it away instead of adding another."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part{path.suffix}")
    _remove(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_h5ad(adata, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def provenance() -> dict[str, str]:
    """Versions of python and of the packages that decide a run's numbers, and the pertflow git
    commit when the library runs from a git checkout (suffixed ``-dirty`` with local changes)."""
    versions = {"python": platform.python_version(), "pertflow": _pertflow_version()}
    for package in VERSIONED:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    versions.update({module: version(dist) for module, dist in VERSIONED_IF_IMPORTED.items()
                     if module in sys.modules})
    commit = _git_commit()
    if commit:
        versions["pertflow_commit"] = commit
    return versions


def _pertflow_version() -> str:
    from pertflow import __version__

    return __version__


@cache
def _git_commit() -> str | None:
    if not (ROOT / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def clear_stale_snakemake_locks(workdir: str | Path = ".") -> IO:
    """Snakemake locks a working directory with plain files, which a killed run (SIGKILL, power
    loss) leaves behind, so the same command then refuses to start until ``--unlock``. Every
    pertflow run instead also holds an OS lock on ``.snakemake/pertflow.lock``, which the OS
    releases when the process ends, however it ends: the run that gets it knows that no other
    run is alive in ``workdir``, so any Snakemake lock files there are stale and are removed.
    Returns the open lock file: keep a reference to it for as long as the run lasts."""
    state = Path(workdir) / ".snakemake"
    state.mkdir(exist_ok=True)
    handle = open(state / "pertflow.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return handle  # another run is alive here: its locks are real
    except OSError:
        return handle  # a filesystem without flock (some Lustre/NFS mounts): clear nothing
    for stale in (state / "locks").glob("*.lock"):
        stale.unlink(missing_ok=True)
    return handle
