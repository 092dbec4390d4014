"""Training contrastiveVI as scvi-tools trains ``ContrastiveVI``: each step draws ``batch_size``
control and ``batch_size`` perturbed cells, an epoch runs through the larger group once, the KL
weight ramps up linearly over ``kl_warmup_epochs``, and the ELBO of held-back cells drives early
stopping. One fused Adam makes Pyro's ``ClippedAdam`` update for every parameter at once.
bench/contrastivevi_profile.py times each part of a step.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from pyro import poutine

from pertflow.models.contrastivevi.module import ContrastiveVAE, DenseBatch, SparseBatch
from pertflow.models.sparse import SparseRows
from pertflow.utils import dense

log = logging.getLogger(__name__)

CHUNK = 1024  # cells per forward pass outside training, to bound memory


class Cells:
    """Cells as the networks read them, minibatches sliced from them: the CSR counts and each
    cell's library size on the host, the one-hot covariates and the classifier's class indices
    (None without a multi-class classifier) on the device."""

    def __init__(self, counts: sp.csr_matrix, covariates: np.ndarray, labels: np.ndarray | None,
                 device: torch.device):
        self.counts, self.device = counts, device
        self.library = np.asarray(counts.sum(axis=1), np.float32).ravel()
        self.covariates = torch.as_tensor(covariates, dtype=torch.float32, device=device)
        self.labels = None if labels is None else torch.as_tensor(labels, device=device)

    def __len__(self) -> int:
        return self.counts.shape[0]

    def _rows(self, control_rows: np.ndarray, perturbed_rows: np.ndarray):
        """The rows, control first, and the fields every kind of batch has."""
        rows = np.concatenate([control_rows, perturbed_rows])
        on_device = torch.as_tensor(rows, device=self.device)
        labels = None if self.labels is None else self.labels[on_device]
        return rows, dict(covariates=self.covariates[on_device], n_control=len(control_rows),
                          labels=labels)

    def sparse_batch(self, control_rows: np.ndarray, perturbed_rows: np.ndarray,
                     control_total: int, perturbed_total: int) -> SparseBatch:
        """Control rows first, then perturbed rows; the plates scale them to the totals."""
        rows, common = self._rows(control_rows, perturbed_rows)
        library = torch.from_numpy(self.library[rows])
        if self.device.type == "cuda":
            library = library.pin_memory().to(self.device, non_blocking=True)
        return SparseBatch(counts=SparseRows(self.counts, rows, self.device, by_gene=True),
                           library=library, control_total=control_total,
                           perturbed_total=perturbed_total, **common)

    def dense_batch(self, control_rows: np.ndarray, perturbed_rows: np.ndarray,
                    control_total: int, perturbed_total: int) -> DenseBatch:
        """``sparse_batch``'s minibatch with dense counts, for the Pyro model and guide."""
        rows, common = self._rows(control_rows, perturbed_rows)
        counts = torch.as_tensor(dense(self.counts[rows]), dtype=torch.float32,
                                 device=self.device)
        return DenseBatch(counts=counts, control_total=control_total,
                          perturbed_total=perturbed_total, **common)

    def chunks(self):
        """Every cell, ``CHUNK`` at a time, as sparse batches of control cells only."""
        for start in range(0, len(self), CHUNK):
            rows = np.arange(start, min(start + CHUNK, len(self)))
            yield self.sparse_batch(rows, rows[:0], len(rows), 0)

    def subset(self, rows: np.ndarray) -> "Cells":
        """These rows only, in this order."""
        labels = None if self.labels is None else self.labels[rows]
        return Cells(self.counts[rows], self.covariates[rows], labels, self.device)


@dataclass
class Split:
    """Training rows of each group, and the rows held back for early stopping."""

    control: np.ndarray
    perturbed: np.ndarray
    control_held: np.ndarray
    perturbed_held: np.ndarray

    @classmethod
    def hold_back(cls, is_control: np.ndarray, is_perturbed: np.ndarray, fraction: float,
                  rng: np.random.Generator) -> "Split":
        """``fraction`` of each group held back, at least one cell of each kept for training."""
        parts = []
        for rows in (np.flatnonzero(is_control), np.flatnonzero(is_perturbed)):
            n_held = min(int(round(fraction * len(rows))), len(rows) - 1)
            shuffled = rng.permutation(rows)
            parts.append((np.sort(shuffled[n_held:]), np.sort(shuffled[:n_held])))
        (control, control_held), (perturbed, perturbed_held) = parts
        return cls(control, perturbed, control_held, perturbed_held)

    @property
    def validating(self) -> bool:
        return len(self.control_held) > 0 and len(self.perturbed_held) > 0


def epoch_batches(control_rows: np.ndarray, perturbed_rows: np.ndarray, batch_size: int,
                  rng: np.random.Generator):
    """One epoch of (control, perturbed) row batches: the larger group is run through once, the
    smaller one is cycled through fresh shuffles (as scvi-tools does). Batches are always full, so
    batch norm never sees a batch of one cell."""
    n_steps = math.ceil(max(len(control_rows), len(perturbed_rows)) / batch_size)

    def stream(rows: np.ndarray) -> np.ndarray:
        n_shuffles = math.ceil(n_steps * batch_size / len(rows))
        return np.concatenate([rng.permutation(rows) for _ in range(n_shuffles)])

    controls, perturbed = stream(control_rows), stream(perturbed_rows)
    for step in range(n_steps):
        window = slice(step * batch_size, (step + 1) * batch_size)
        yield controls[window], perturbed[window]


class FusedClippedAdam(torch.optim.Adam):
    """Pyro's ``ClippedAdam`` update (``pyro.optim.ClippedAdam``: each gradient clamped
    elementwise to ±clip_norm, L2 weight decay added to it, then Adam with
    step = lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ)·m/(√v + eps)) as one fused Adam step over every parameter,
    instead of one Python-level optimiser per parameter. Torch's Adam divides by
    √v/√(1 − β₂ᵗ) + eps, so its eps is set to eps/√(1 − β₂ᵗ) each step: the same update, to
    float rounding."""

    def __init__(self, params, lr: float, eps: float, weight_decay: float, clip_norm: float):
        params = list(params)
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32
                    for p in params)
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay,
                         fused=fused or None)
        self.clip_norm, self.pyro_eps, self.steps = clip_norm, eps, 0

    @torch.no_grad()
    def step(self, closure=None):
        self.steps += 1
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.clamp_(-self.clip_norm, self.clip_norm)
            group["eps"] = self.pyro_eps / math.sqrt(1 - group["betas"][1] ** self.steps)
        return super().step(closure)


def optimiser(network: ContrastiveVAE, params: dict) -> FusedClippedAdam:
    """Every parameter, the networks' and the inverse dispersion's unconstrained value, in one
    optimiser. Call inside the model's param store scope."""
    parameters = [*network.parameters(), network.inverse_dispersion().unconstrained()]
    return FusedClippedAdam(parameters, lr=params["lr"], eps=0.01,  # eps as scvi-tools' Adam
                            weight_decay=params["weight_decay"], clip_norm=params["clip_norm"])


def train(network: ContrastiveVAE, cells: Cells, split: Split, params: dict,
          rng: np.random.Generator) -> list[dict]:
    """Train ``network`` inside the caller's Pyro param store scope (the inverse dispersion lives
    there); returns one row per epoch: KL weight, train and held-out −ELBO per cell, seconds."""
    p = params
    max_epochs = p["max_epochs"] or min(round(20000 / len(cells) * 400), 400)
    n_train = len(split.control) + len(split.perturbed)
    history, best, since_best = [], math.inf, 0
    adam = optimiser(network, p)
    for epoch in range(max_epochs):
        started = time.perf_counter()
        # Linear KL warm-up as scvi-tools, shifted by one epoch: Pyro scales must be > 0.
        kl_weight = min(1.0, (epoch + 1) / max(p["kl_warmup_epochs"], 1))
        network.train()
        losses = []
        for c, t in epoch_batches(split.control, split.perturbed, p["batch_size"], rng):
            batch = cells.sparse_batch(c, t, len(split.control), len(split.perturbed))
            loss, _ = network.loss(batch, kl_weight)
            adam.zero_grad(set_to_none=True)
            loss.backward()
            adam.step()
            losses.append(loss.detach())  # read once per epoch: no sync per step
        row = {"epoch": epoch + 1, "kl_weight": kl_weight,
               "train_loss": float(np.mean([float(x) for x in losses])) / n_train}
        if split.validating:
            heldout = heldout_losses(network, cells, split.control_held, split.perturbed_held)
            row.update({f"validation_{name}": value for name, value in heldout.items()})
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        log.info("epoch %d/%d  train −ELBO/cell %.2f  validation −ELBO/cell %s",
                 epoch + 1, max_epochs, row["train_loss"],
                 f"{row['validation_loss']:.2f}" if split.validating else "n/a")
        if split.validating:
            if row["validation_loss"] < best:
                best, since_best = row["validation_loss"], 0
            else:
                since_best += 1
            patience = p["early_stopping_patience"]
            if patience is not None and since_best >= patience:
                log.info("early stopping after %d epochs: no improvement of the held-out ELBO "
                         "in %d epochs", epoch + 1, since_best)
                break
    return history


@torch.no_grad()
def heldout_losses(network: ContrastiveVAE, cells: Cells, control_rows: np.ndarray,
                   perturbed_rows: np.ndarray, by_pyro: bool = False) -> dict[str, float]:
    """−ELBO and reconstruction loss (−log p(x | z, t, library)) per cell: a single-sample
    estimate with the full KL weight, no penalties and the networks in eval mode. Chunks keep
    both groups non-empty, and each plate covers its whole chunk, so nothing is rescaled. By the
    training path's loss, or (``by_pyro``) through the Pyro model and guide."""
    network.eval()
    guide = network.guide_without_penalties()
    n_chunks = min(math.ceil(max(len(control_rows), len(perturbed_rows)) / CHUNK),
                   len(control_rows), len(perturbed_rows))
    elbo = log_likelihood = 0.0
    for c, t in zip(np.array_split(control_rows, n_chunks),
                    np.array_split(perturbed_rows, n_chunks)):
        if not by_pyro:
            loss, per_cell = network.loss(  # log p − log q at the draws, as below
                cells.sparse_batch(c, t, len(c), len(t)), penalties=False, closed_form_kl=False)
            elbo -= float(loss)
            log_likelihood += float(per_cell.sum())
            continue
        batch = cells.dense_batch(c, t, len(c), len(t))
        guide_trace = poutine.trace(guide).get_trace(batch)
        model_trace = poutine.trace(poutine.replay(network.model, trace=guide_trace)).get_trace(
            batch)
        elbo += float(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
        log_likelihood += sum(float(model_trace.nodes[site]["log_prob_sum"])
                              for site in ("x_control", "x_perturbed"))
    n_cells = len(control_rows) + len(perturbed_rows)
    return {"loss": -elbo / n_cells, "reconstruction_loss": -log_likelihood / n_cells}
