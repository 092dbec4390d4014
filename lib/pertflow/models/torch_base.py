"""What every torch model does the same way: its device and threads, seeding, the genes it was
trained on, its loss history and loading its saved tensors. Each model keeps only its own network,
training loop and prediction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd
import torch

from pertflow.errors import DataError
from pertflow.models.base import Model
from pertflow.models.torch_utils import resolve_device, reuse_freed_memory, seed_everything


class TorchModel(Model):
    """Base class of the torch models: ``_start_training`` first in ``_fit``, ``_check_genes``
    on every input after it, and ``super()`` first in ``_save_state`` and ``_load_state``.

    Subclasses set ``self.history`` (one row per epoch) in ``_fit``, and declare ``device``
    (auto | cpu | cuda[:n]) in their ``defaults``.
    """

    device: torch.device
    genes: list[str]
    history: pd.DataFrame

    @classmethod
    def _check_param_rules(cls, params: dict[str, Any], where: str) -> None:
        device = params["device"]
        if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
            raise cls.param_error(where, "device", device, "auto, cpu, cuda or cuda:<index>")
        fraction = params.get("validation_fraction")  # cells held back for early stopping
        if fraction is not None and not 0 <= fraction < 1:
            raise cls.param_error(where, "validation_fraction", fraction, "a fraction in [0, 1)")

    @classmethod
    def use_threads(cls, n: int) -> None:
        torch.set_num_threads(n)  # one intra-op thread per job core: oversubscription is slow

    def _start_training(self, train: ad.AnnData) -> torch.Generator:
        """Resolve the device, seed python, numpy and torch, and remember the training genes;
        returns a CPU generator for data order (``seed_everything``)."""
        self.device = resolve_device(self.params["device"])
        generator = seed_everything(self.seed)
        reuse_freed_memory()
        self.genes = list(train.var_names)
        return generator

    def _check_genes(self, adata: ad.AnnData) -> None:
        """Cells given after training must have the training genes, in the same order."""
        if list(adata.var_names) == self.genes:
            return
        given = set(adata.var_names)
        missing = [gene for gene in self.genes if gene not in given]
        differ = (f"{len(missing)} of them missing (first: {missing[:3]})" if missing
                  else "others besides them, or another order")
        raise DataError(
            f"model '{self.name}' was trained on {len(self.genes)} genes; these cells have "
            f"{adata.n_vars} genes, {differ}. Subset the cells to the training genes in the "
            "same order: adata[:, model.genes].")

    def _save_state(self, directory: Path) -> None:
        (directory / "genes.json").write_text(json.dumps(self.genes))
        self.history.to_csv(directory / "losses.csv", index=False)

    def _load_state(self, directory: Path) -> None:
        self.device = resolve_device(self.params["device"])
        self.genes = json.loads((directory / "genes.json").read_text())
        self.history = pd.read_csv(directory / "losses.csv")

    @staticmethod
    def _load_tensors(path: Path) -> Any:
        """What ``torch.save`` wrote to ``path``, on the CPU: networks copy their weights to their
        device as they load them. Only tensors and plain containers (``weights_only``)."""
        return torch.load(path, map_location="cpu", weights_only=True)
