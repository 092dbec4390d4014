"""Baselines: the scGen paper's (no change, a mean shift in gene space, PCA vector arithmetic) and
the ones that transfer the responses of the training groups most like the held-out group
(``pertflow.models.transfer``): group shifts weighted by similarity, and scPRAM's per-cell transport."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
from sklearn.decomposition import PCA

from pertflow.models import transfer
from pertflow.models.base import Model, register
from pertflow.utils import balanced_indices, dense


@register("control")
class ControlBaseline(Model):
    """Predicts that the perturbation changes nothing: held-out controls are returned unchanged."""

    is_baseline = True
    param_help = {}

    def _fit(self, train: ad.AnnData) -> None:
        pass

    def predict(self, control_cells: ad.AnnData) -> ad.AnnData:
        return self._prediction(control_cells, dense(control_cells.X).astype(np.float32))

    def _save_state(self, directory: Path) -> None:
        pass

    def _load_state(self, directory: Path) -> None:
        pass


class _ShiftModel(Model):
    """Shared arithmetic: delta = mean(embed(perturbed)) − mean(embed(control)) over training cells,
    optionally after resampling every group to the largest group's size (scGen's balancing)."""

    is_baseline = True

    def _embed(self, X: np.ndarray) -> np.ndarray:
        return X

    def _decode(self, Z: np.ndarray) -> np.ndarray:
        return Z

    def _fit(self, train: ad.AnnData) -> None:
        self._fit_embedding(train)
        k = self.keys
        rng = np.random.default_rng(self.seed)
        means = []
        for label in (k.perturbed, k.control):
            cells = train[(train.obs[k.condition] == label).to_numpy()]
            if self.params["balanced"]:
                cells = cells[balanced_indices(cells.obs[k.group].to_numpy(), rng)]
            means.append(self._embed(dense(cells.X)).mean(axis=0))
        self.delta = (means[0] - means[1]).astype(np.float64)

    def _fit_embedding(self, train: ad.AnnData) -> None:
        pass

    def predict(self, control_cells: ad.AnnData) -> ad.AnnData:
        shifted = self._decode(self._embed(dense(control_cells.X)) + self.delta)
        return self._prediction(control_cells, shifted.astype(np.float32))

    def _save_state(self, directory: Path) -> None:
        np.savez(directory / "state.npz", delta=self.delta)

    def _load_state(self, directory: Path) -> None:
        self.delta = np.load(directory / "state.npz")["delta"]


@register("mean_shift")
class MeanShift(_ShiftModel):
    """Held-out controls + (mean perturbed − mean control) of the training cells, in gene space."""

    defaults = {"balanced": False}
    param_help = {"balanced": "resample every group to the largest group's size first (scGen's balancing)"}


def fit_pca(X: np.ndarray, n_comps: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and components (n_comps × genes) of an exact PCA of the rows of X, from the
    eigendecomposition of the smaller of the gene covariance and the cells' Gram matrix: far
    faster than a full SVD of the cell matrix."""
    n_comps = min(n_comps, X.shape[0] - 1, X.shape[1])
    if X.shape[0] > X.shape[1]:
        pca = PCA(n_components=n_comps, svd_solver="covariance_eigh").fit(X)
        return pca.mean_, pca.components_
    mean = X.mean(0)
    centred = X - mean
    eigenvalues, vectors = np.linalg.eigh(centred @ centred.T)      # cells × cells
    top = np.argsort(eigenvalues)[::-1][:n_comps]
    components = vectors[:, top].T @ centred / np.sqrt(eigenvalues[top])[:, None]
    return mean, components


@register("pca_shift")
class PCAShift(_ShiftModel):
    """The same arithmetic in a PCA space fitted on the training cells, projected back to genes."""

    defaults = {"balanced": False, "n_comps": 100}
    param_help = {"balanced": "resample every group to the largest group's size first (scGen's balancing)",
                  "n_comps": "PCA components of the training cells the shift is taken in"}

    def _fit_embedding(self, train: ad.AnnData) -> None:
        self.mean_, self.components_ = fit_pca(dense(train.X), self.params["n_comps"])

    def _embed(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) @ self.components_.T

    def _decode(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self.components_ + self.mean_

    def _save_state(self, directory: Path) -> None:
        np.savez(directory / "state.npz", delta=self.delta, mean=self.mean_,
                 components=self.components_)

    def _load_state(self, directory: Path) -> None:
        state = np.load(directory / "state.npz")
        self.delta, self.mean_ = state["delta"], state["mean"]
        self.components_ = state["components"]


class _TransferModel(Model):
    """Held-out controls + the transferred responses of the training groups (``method`` of
    ``pertflow.models.transfer``), in gene space or in a PCA of the training cells; the transfer's
    settings and α are chosen by leave-one-group-out on the training groups."""

    is_baseline = True
    method: str

    def _fit(self, train: ad.AnnData) -> None:
        p, k = self.params, self.keys
        condition, groups = train.obs[k.condition].to_numpy(), train.obs[k.group].to_numpy()
        transfer.require_paired_groups(condition, groups, k.control, k.perturbed)
        X = dense(train.X)
        self.mean_ = self.components_ = None
        if p["space"] == "pca":
            self.mean_, self.components_ = fit_pca(X, p["n_comps"])
        rng = np.random.default_rng(self.seed)
        self.responses = transfer.group_responses(self._embed(X), condition, groups, k.control,
                                                  k.perturbed, rng, p["max_cells"])
        if self.method == "per_cell":
            transfer.transport(self.responses)
        targets = transfer.changed_genes(X, condition, groups, self.responses.names, k.control,
                                         k.perturbed, p["score_genes"])
        self.choice = transfer.choose(self.method, self.responses, targets, self._decode_mean,
                                      linear=True)
        self.transfer = self.choice.record(p["space"])

    def _embed(self, X: np.ndarray) -> np.ndarray:
        return X if self.components_ is None else (X - self.mean_) @ self.components_.T

    def _decode_mean(self, Z: np.ndarray, genes: np.ndarray) -> np.ndarray:
        if self.components_ is None:
            return Z.mean(0)[genes]
        return Z.mean(0) @ self.components_[:, genes] + self.mean_[genes]

    def predict(self, control_cells: ad.AnnData) -> ad.AnnData:
        X = dense(control_cells.X)
        delta, weights = transfer.transferred(self.choice, self.responses, self._embed(X))
        self.transfer = self.choice.record(self.params["space"], weights)
        # The delta, not the cells, goes through the PCA: each cell keeps its expression outside
        # the components, so predicted cells vary as real ones do.
        if self.components_ is not None:
            delta = delta @ self.components_
        return self._prediction(control_cells, (X + delta).astype(np.float32))

    def _save_state(self, directory: Path) -> None:
        state = self.responses.to_arrays()
        if self.components_ is not None:
            state |= {"mean": self.mean_, "components": self.components_}
        np.savez(directory / "state.npz", **state)
        self.choice.scores.to_csv(directory / "transfer_scores.csv")

    def _load_state(self, directory: Path) -> None:
        with np.load(directory / "state.npz") as state:
            self.responses = transfer.Responses.from_arrays(state)
            self.mean_, self.components_ = (state["mean"], state["components"]) \
                if "components" in state else (None, None)
        self.choice = transfer.Choice.from_record(self.transfer)


@register("similarity_shift")
class SimilarityShift(_TransferModel):
    """Held-out controls + α · Σ_g w_g delta_g over the training groups g with both conditions,
    w_g ∝ exp(sim_g / τ) by how much g's controls resemble the held-out controls."""

    method = "similarity"
    defaults = {
        "space": "genes",      # pca: a PCA of the training cells
        "n_comps": 50,         # PCA components with space: pca
        "score_genes": transfer.SCORE_GENES,  # each training group's most changed genes scored
        "max_cells": 500,      # cells per group and condition kept for the inner choice
    }
    choices = {"space": ("genes", "pca")}
    param_help = {
        "space": "where groups are compared: genes, or a PCA of the training cells",
        "n_comps": "PCA components (with space: pca)",
        "score_genes": "each training group's most changed genes the transfer is chosen on",
        "max_cells": "cells per group and condition kept for the inner choice",
    }


@register("transport_shift")
class TransportShift(_TransferModel):
    """scPRAM's per-cell transfer in a PCA of the training cells: optimal transport pairs each
    training group's control and perturbed cells; each held-out control cell takes the
    similarity-weighted delta of its k most similar (cosine) training control cells."""

    method = "per_cell"
    defaults = {
        "space": "pca",
        "n_comps": 50,
        "score_genes": transfer.SCORE_GENES,
        "max_cells": 500,      # cells per group and condition transported (seeded subsample)
    }
    choices = {"space": ("pca",)}
    param_help = {
        "space": "where cells are paired: a PCA of the training cells",
        "n_comps": "PCA components (with space: pca)",
        "score_genes": "each training group's most changed genes the transfer is chosen on",
        "max_cells": "cells per group and condition transported (seeded subsample)",
    }
