"""The README's example of a model of one's own, kept outside the package: named in the config with
``module: scaled_shift`` (importable from PYTHONPATH) and run by the whole workflow in the tests."""

from pathlib import Path

import anndata as ad
import numpy as np

from pertflow.models import Model, register
from pertflow.utils import dense


@register("scaled_shift")
class ScaledShift(Model):
    """Held-out controls + scale × (mean perturbed − mean control) of the training cells."""

    defaults = {"scale": 1.0}
    param_help = {"scale": "multiplies the training cells' mean shift"}
    is_baseline = True

    def _fit(self, train: ad.AnnData) -> None:
        condition = train.obs[self.keys.condition].to_numpy()
        X = dense(train.X)
        self.delta = (X[condition == self.keys.perturbed].mean(0)
                      - X[condition == self.keys.control].mean(0))

    def predict(self, control_cells: ad.AnnData) -> ad.AnnData:
        shifted = dense(control_cells.X) + self.params["scale"] * self.delta
        return self._prediction(control_cells, shifted.astype(np.float32))

    def _save_state(self, directory: Path) -> None:
        np.save(directory / "delta.npy", self.delta)

    def _load_state(self, directory: Path) -> None:
        self.delta = np.load(directory / "delta.npy")
