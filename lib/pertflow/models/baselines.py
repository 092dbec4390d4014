"""The scGen paper's baselines: no change, a mean shift in gene space, and PCA vector arithmetic."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
from sklearn.decomposition import PCA

from pertflow.models.base import Model, register
from pertflow.utils import balanced_indices, dense


@register("control")
class ControlBaseline(Model):
    """Predicts that the perturbation changes nothing: held-out controls are returned unchanged."""

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


@register("pca_shift")
class PCAShift(_ShiftModel):
    """The same arithmetic in a PCA space fitted on the training cells, projected back to genes."""

    defaults = {"balanced": False, "n_comps": 100}

    def _fit_embedding(self, train: ad.AnnData) -> None:
        X = dense(train.X)
        n_comps = min(self.params["n_comps"], X.shape[0] - 1, X.shape[1])
        # With more cells than genes, the eigendecomposition of the gene covariance is exact and
        # far faster than a full SVD of the cell matrix (100k cells: minutes → seconds).
        solver = "covariance_eigh" if X.shape[0] > X.shape[1] else "full"
        self.pca = PCA(n_components=n_comps, svd_solver=solver).fit(X)
        self.mean_, self.components_ = self.pca.mean_, self.pca.components_

    def _embed(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) @ self.components_.T

    def _decode(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self.components_ + self.mean_

    def _save_state(self, directory: Path) -> None:
        np.savez(directory / "state.npz", delta=self.delta, mean=self.mean_,
                 components=self.components_)

    def _load_state(self, directory: Path) -> None:
        state = np.load(directory / "state.npz")
        self.delta, self.mean_, self.components_ = state["delta"], state["mean"], state["components"]
