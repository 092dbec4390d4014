"""scGen (Lotfollahi, Wolf & Theis 2019): latent-space vector arithmetic with a VAE.

A VAE is trained on log-normalised expression of every training cell. The perturbation is one
latent vector, delta = mean latent(perturbed) − mean latent(control) over the training cells (cell
types balanced first); a held-out group's controls are encoded, shifted by delta and decoded.

Behaviour follows the reference implementation (theislab/scgen 2.1 on scvi-tools 0.19): the
architecture (LeakyReLU, BatchNorm momentum 0.01 / eps 1e-3, variance = exp(·) + 1e-4), the loss
0.5·MSE_sum + 0.5·kl_weight·KL averaged over cells, Adam with scvi's eps=0.01 and weight decay
1e-6, a 10% validation split, the balancing and the arithmetic. The decoder is the reference's
DecoderSCGEN: latent → n_hidden × n_layers (Linear, BatchNorm, LeakyReLU, dropout) → a plain
Linear to the genes, with no output activation. Three deliberate differences in the defaults:

- early stopping and the choice of the final weights watch a leave-one-group-out test of the
  arithmetic on the training groups (``ArithmeticCheck``), not scvi's ELBO (see ``_fit``);
- the delta is not one vector (``delta_groups``). The reference (``all``) averages every
  training control, the held-out group's included, but that group has no perturbed cells to
  balance them: with n groups its delta is the mean shift plus 1/n of (other groups' control
  mean − held-out control mean), a pull of the prediction toward the other cell types;
  ``paired`` averages over the groups with cells in both conditions. ``similarity`` and
  ``transport`` (the default, scPRAM's per-cell deltas) transfer the latent responses of the
  training groups that resemble the held-out one (``pertflow.models.transfer``), chosen
  leave-one-group-out on decoded genes: averaging the responses of unlike cell types blurs them;
- the prediction is the control cell plus the decoded change, decode(z + delta) − decode(z)
  (``prediction: residual``), not decode(z + delta) (``decoded``): the VAE's reconstruction
  error and each cell's own variation stay out of the predicted change.

Speed comes from a plain loop instead of a framework: minibatches are row slices of one CSR
matrix, the first layer reads the sparse rows directly (``pertflow.models.sparse``: its cost
follows the non-zeros, not cells × genes), and Adam is fused.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from pertflow.models import transfer
from pertflow.errors import ConfigError
from pertflow.benchmark.metrics import r2_of
from pertflow.models.base import register
from pertflow.models.sparse import SparseInputLinear, SparseRows, as_csr
from pertflow.models.torch_base import TorchModel
from pertflow.utils import balanced_indices, dense

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The network


def norm_layer(kind: str, width: int) -> nn.Module:
    """``norm``: batch | layer | none (ScGen.choices)."""
    if kind == "batch":
        return nn.BatchNorm1d(width, momentum=0.01, eps=1e-3)  # scvi's settings
    if kind == "layer":
        return nn.LayerNorm(width, elementwise_affine=False)
    return nn.Identity()


def after_linear(kind: str, width: int, dropout: float) -> list[nn.Module]:
    """What follows every hidden linear layer: norm → LeakyReLU → dropout."""
    return [norm_layer(kind, width), nn.LeakyReLU(), nn.Dropout(dropout)]


class VAE(nn.Module):
    """Encoder genes → n_hidden × n_layers → Gaussian(n_latent); decoder mirrors it back to genes."""

    def __init__(self, n_genes: int, n_hidden: int, n_latent: int, n_layers: int,
                 dropout_rate: float, norm: str):
        super().__init__()
        self.input_layer = SparseInputLinear(n_genes, n_hidden)
        encoder = after_linear(norm, n_hidden, dropout_rate)
        for _ in range(n_layers - 1):
            encoder += [nn.Linear(n_hidden, n_hidden), *after_linear(norm, n_hidden, dropout_rate)]
        self.encoder = nn.Sequential(*encoder)
        self.latent_mean = nn.Linear(n_hidden, n_latent)
        self.latent_log_var = nn.Linear(n_hidden, n_latent)
        decoder = [nn.Linear(n_latent, n_hidden), *after_linear(norm, n_hidden, dropout_rate)]
        for _ in range(n_layers - 1):
            decoder += [nn.Linear(n_hidden, n_hidden), *after_linear(norm, n_hidden, dropout_rate)]
        decoder.append(nn.Linear(n_hidden, n_genes))
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: SparseRows) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(self.input_layer(x))
        variance = torch.exp(self.latent_log_var(hidden)) + 1e-4  # the floor keeps log() finite
        return self.latent_mean(hidden), variance

    def loss(self, x: SparseRows, kl_weight: float, recon_loss: str) -> torch.Tensor:
        """0.5 · reconstruction error summed over genes + 0.5 · kl_weight · KL, mean over cells.
        In eval mode z is the latent mean, so the validation loss carries no sampling noise."""
        mean, variance = self.encode(x)
        z = mean + variance.sqrt() * torch.randn_like(mean) if self.training else mean
        error = self.decoder(z) - x.dense()
        recon = error.square().sum(1) if recon_loss == "mse" else error.abs().sum(1)
        kl = 0.5 * (variance + mean.square() - 1 - variance.log()).sum(1)
        return (0.5 * recon + 0.5 * kl_weight * kl).mean()


# ---------------------------------------------------------------------------------------------
# Training and inference loops


def train_epoch(vae: VAE, X: sp.csr_matrix, rows: np.ndarray, params: dict,
                optimizer: torch.optim.Optimizer, generator: torch.Generator,
                device: torch.device) -> float:
    """One pass over ``rows`` in shuffled minibatches; returns the cell-weighted mean loss."""
    vae.train()
    order = rows[torch.randperm(len(rows), generator=generator).numpy()]
    batch_size, total, seen = params["batch_size"], 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        if len(batch) < 2 and params["norm"] == "batch":
            continue  # BatchNorm cannot normalise a single cell
        loss = vae.loss(SparseRows(X, batch, device), params["kl_weight"], params["recon_loss"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, seen = total + loss.item() * len(batch), seen + len(batch)
    return total / max(seen, 1)


@torch.no_grad()
def eval_loss(vae: VAE, X: sp.csr_matrix, rows: np.ndarray, params: dict,
              device: torch.device, chunk: int = 1024) -> float:
    vae.eval()
    total = 0.0
    for start in range(0, len(rows), chunk):
        batch = rows[start:start + chunk]
        loss = vae.loss(SparseRows(X, batch, device), params["kl_weight"], params["recon_loss"])
        total += loss.item() * len(batch)
    return total / len(rows)


@torch.no_grad()
def latent_means(vae: VAE, X: sp.csr_matrix, device: torch.device,
                 chunk: int = 1024) -> np.ndarray:
    vae.eval()
    parts = [vae.encode(SparseRows(X, np.arange(s, min(s + chunk, X.shape[0])), device))[0]
             for s in range(0, X.shape[0], chunk)]
    return torch.cat(parts).cpu().numpy()


@torch.no_grad()
def decode_genes(vae: VAE, z: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
    """The decoder's output for some genes only: the hidden layers, then just those rows of the
    output layer (a fraction of a full decode when few genes are asked for)."""
    vae.eval()
    output = vae.decoder[-1]
    return F.linear(vae.decoder[:-1](z), output.weight[genes], output.bias[genes])


@torch.no_grad()
def decode(vae: VAE, Z: np.ndarray, device: torch.device, chunk: int = 1024) -> np.ndarray:
    vae.eval()
    parts = [vae.decoder(torch.from_numpy(Z[s:s + chunk]).to(device))
             for s in range(0, len(Z), chunk)]
    return torch.cat(parts).cpu().numpy()


def lr_factor(epoch: int, max_epochs: int, schedule: str, final: float) -> float:
    """Learning-rate multiplier at a 0-based epoch: 1 throughout (constant), or a half cosine
    from 1 at the first epoch to ``final`` at the last (cosine)."""
    if schedule == "constant":
        return 1.0
    progress = min(epoch, max_epochs - 1) / max(max_epochs - 1, 1)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def latent_delta(latent: np.ndarray, condition: np.ndarray, groups: np.ndarray, control: str,
                 perturbed: str, rng: np.random.Generator, restrict_to: list[str] | None = None,
                 paired: bool = False) -> np.ndarray:
    """Mean latent of perturbed minus control cells. With more than one group present, every group
    is first resampled to the largest group's size (per condition), so abundant cell types do not
    dominate the vector; ``restrict_to`` uses only the listed groups; ``paired`` only the groups
    with cells in both conditions."""
    keep = np.ones(len(groups), bool) if restrict_to is None else np.isin(groups, restrict_to)
    if paired:
        present = [set(groups[keep & (condition == label)]) for label in (control, perturbed)]
        keep &= np.isin(groups, list(present[0] & present[1]))
    means = {}
    for label in (perturbed, control):
        rows = np.flatnonzero(keep & (condition == label))
        if len(rows) == 0:
            which = "with both conditions " if paired else ""
            raise ConfigError(f"scgen: no training cells with condition {label!r} in groups "
                              f"{which}among {restrict_to or 'all'}; check "
                              "restrict_arithmetic_to (and delta_groups: all uses every group).")
        if len(np.unique(groups[rows])) > 1:
            rows = rows[balanced_indices(groups[rows], rng)]
        means[label] = latent[rows].mean(axis=0)
    return (means[perturbed] - means[control]).astype(np.float32)


class ArithmeticCheck:
    """Leave-one-group-out test of the latent arithmetic on the training groups, the task scGen is
    scored on, without touching the held-out group's perturbed cells.

    For every group g with cells in both conditions: delta = mean over the *other* such groups of
    (mean latent perturbed − mean latent control), each group weighted equally as the balancing
    does; decode g's controls + delta and score R² of mean expression against g's real perturbed
    cells on g's ``n_genes`` most changed genes. The score is the mean over groups. At most
    ``max_cells`` cells per group and condition are used, so an epoch's check stays cheap.
    """

    def __init__(self, X: sp.csr_matrix, condition: np.ndarray, groups: np.ndarray,
                 control: str, perturbed: str, rng: np.random.Generator,
                 n_genes: int = transfer.SCORE_GENES, max_cells: int = 500):
        names = transfer.paired_groups(condition, groups, control, perturbed)
        # per group: its genes and their real perturbed means
        self.groups = [(torch.from_numpy(genes), real) for genes, real in transfer.changed_genes(
            X, condition, groups, names, control, perturbed, n_genes)]
        parts = []        # per group: control rows, perturbed rows
        for group in names:
            rows = [np.flatnonzero((groups == group) & (condition == label))
                    for label in (control, perturbed)]
            parts += [np.sort(rng.choice(r, max_cells, replace=False)) if len(r) > max_cells
                      else r for r in rows]
        self.rows = np.concatenate(parts) if parts else np.array([], int)
        self.bounds = np.cumsum([len(r) for r in parts])[:-1]

    @property
    def usable(self) -> bool:
        """Leaving one group out needs at least two groups with both conditions."""
        return len(self.groups) >= 2

    def __call__(self, vae: VAE, X: sp.csr_matrix, device: torch.device) -> float:
        pieces = np.split(latent_means(vae, X[self.rows], device), self.bounds)
        controls, perturbed = pieces[0::2], pieces[1::2]
        shifts = np.stack([stim.mean(0) - ctrl.mean(0) for ctrl, stim in zip(controls, perturbed)])
        scores = []
        for i, (ctrl, (genes, real)) in enumerate(zip(controls, self.groups)):
            delta = np.delete(shifts, i, axis=0).mean(0)
            z = torch.from_numpy(ctrl + delta).to(device)
            predicted = decode_genes(vae, z, genes.to(device)).mean(0).cpu().numpy()
            scores.append(r2_of(predicted, real))
        return float(np.nanmean(scores))


# ---------------------------------------------------------------------------------------------
# The model


@register("scgen")
class ScGen(TorchModel):
    """scGen: a VAE whose latent space carries the perturbation as one vector."""

    min_batch_cells = 2  # BatchNorm in the hidden layers (norm: batch)

    defaults = {
        # architecture (the reference's)
        "n_hidden": 800,
        "n_layers": 2,
        "n_latent": 100,
        "dropout_rate": 0.2,
        "norm": "batch",            # after each hidden linear layer
        "recon_loss": "mse",
        "kl_weight": 5e-5,
        # optimisation
        "batch_size": 64,           # more optimiser steps per second than 128, steadier than 32
        "lr": 1e-3,
        "lr_schedule": "cosine",    # cosine: down to lr·lr_final_fraction at max_epochs
        "lr_final_fraction": 0.1,
        "adam_eps": 0.01,           # scvi's TrainingPlan defaults
        "weight_decay": 1e-6,
        "max_epochs": 80,
        "validation_fraction": 0.1,
        "stop_on": "arithmetic",    # what patience and restore_best watch
        "patience": 20,             # epochs without a better score; None: never stop
        "min_epochs": 40,           # epochs trained before one is kept or stopping starts
        "restore_best": True,       # end with the weights of the best-scoring epoch
        # prediction
        "delta_groups": "transport",  # see the module docstring
        "restrict_arithmetic_to": None,  # list of groups for delta; None: all groups
        # decoded: decode(z + delta), as the reference; residual: the control cell + decode(z +
        # delta) − decode(z), the decoded change added to the cell's own expression
        "prediction": "residual",
        "device": "auto",
    }

    param_help = {
        "n_hidden": "units per hidden layer of encoder and decoder",
        "n_layers": "hidden layers of encoder and decoder",
        "n_latent": "dimensions of the latent space",
        "dropout_rate": "dropout after each hidden layer",
        "norm": "normalisation after each hidden linear layer",
        "recon_loss": "reconstruction error of the VAE loss (mse: the reference's)",
        "kl_weight": "weight of the KL term in the VAE loss",
        "batch_size": "cells per training minibatch",
        "lr": "Adam learning rate",
        "lr_schedule": "cosine: decay to lr × lr_final_fraction at max_epochs; constant: none",
        "lr_final_fraction": "learning rate at max_epochs as a fraction of lr (cosine schedule)",
        "adam_eps": "Adam's epsilon (scvi's 0.01)",
        "weight_decay": "Adam weight decay",
        "max_epochs": "most training epochs",
        "validation_fraction": "fraction of training cells held back for validation",
        "stop_on": "what early stopping and restore_best watch: the latent arithmetic on the "
                   "training groups, or the validation loss",
        "patience": "epochs without a better score before stopping (null: never stop early)",
        "min_epochs": "epochs trained before an epoch is kept or stopping starts",
        "restore_best": "end with the weights of the best-scoring epoch",
        "delta_groups": "the latent delta: paired/all (one mean vector), similarity (similar "
                        "groups' deltas) or transport (per-cell deltas, scPRAM)",
        "restrict_arithmetic_to": "groups the delta is computed from (null: all groups)",
        "prediction": "residual: control + decoded change; decoded: decode(z + delta), as the "
                      "reference",
        "device": "where to train: auto (a GPU when the job sees one), cpu, cuda or cuda:n",
    }

    choices = {
        "norm": ("batch", "layer", "none"),
        "recon_loss": ("mse", "l1"),
        "lr_schedule": ("constant", "cosine"),
        "stop_on": ("arithmetic", "validation_loss"),
        "delta_groups": ("paired", "all", "similarity", "transport"),
        "prediction": ("decoded", "residual"),
    }

    def _build(self, n_genes: int) -> VAE:
        p = self.params
        return VAE(n_genes, p["n_hidden"], p["n_latent"], p["n_layers"], p["dropout_rate"],
                   p["norm"]).to(self.device)

    def _fit(self, train: ad.AnnData) -> None:
        """Train, keeping the weights of the epoch with the best stopping score.

        The reference stops on scvi's ``elbo_validation`` = full MSE + *unweighted* KL, while the
        loss it minimises weights KL by 5e-5. Nothing holds the KL of 100 latent dimensions down,
        so it grows by far more after the first epochs than the MSE improves: that criterion is
        lowest within the first few epochs and stops training long before the prediction
        converges.

        The validation loss that is trained (``stop_on: validation_loss``) keeps falling, but a
        lower loss does not mean a better prediction: reconstruction of the unseen perturbed cells
        keeps improving for hundreds of epochs while the arithmetic does not. So the default
        score is the arithmetic itself, tested leave-one-group-out on the training groups
        (``ArithmeticCheck``), which rises and falls with the held-out group's R² over the epochs
        of a run. It decodes groups the model has seen, so an undertrained model can score well
        on it early on: nothing before ``min_epochs`` is kept.
        Without two training groups that have both conditions it cannot be computed and the
        validation loss is used. The cosine decay of the learning rate damps the epoch-to-epoch
        swings of the predicted response seen at a constant rate.
        """
        p, k = self.params, self.keys
        generator = self._start_training(train)
        rng = np.random.default_rng(self.seed)
        X = as_csr(train.X)
        condition, groups = train.obs[k.condition].to_numpy(), train.obs[k.group].to_numpy()
        if p["delta_groups"] != "all":  # fails before training when no group has both
            transfer.require_paired_groups(condition, groups, k.control, k.perturbed)

        shuffled = rng.permutation(X.shape[0])
        n_val = int(round(p["validation_fraction"] * X.shape[0]))
        val_rows, train_rows = np.sort(shuffled[:n_val]), shuffled[n_val:]
        check = None
        if p["stop_on"] == "arithmetic":
            check = ArithmeticCheck(X, condition, groups, k.control, k.perturbed, rng)
            if not check.usable:
                log.warning("scgen: stop_on: arithmetic needs two training groups with both "
                            "conditions; %d here, so the validation loss is watched instead",
                            len(check.groups))
                check = None
        # what patience and restore_best watch; None: nothing to watch, train for max_epochs
        stop_on = "arithmetic" if check is not None else "validation_loss" if n_val else None

        self.vae = self._build(X.shape[1])
        optimizer = torch.optim.Adam(self.vae.parameters(), lr=p["lr"], eps=p["adam_eps"],
                                     weight_decay=p["weight_decay"], fused=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(
            epoch, p["max_epochs"], p["lr_schedule"], p["lr_final_fraction"]))

        best_score, best_state, best_epoch, rows = -math.inf, None, 0, []
        for epoch in range(1, p["max_epochs"] + 1):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train_loss = train_epoch(self.vae, X, train_rows, p, optimizer, generator,
                                     self.device)
            val_loss = eval_loss(self.vae, X, val_rows, p, self.device) if n_val else math.nan
            arithmetic = check(self.vae, X, self.device) if check is not None else math.nan
            schedule.step()
            seconds = time.perf_counter() - started
            rows.append((epoch, train_loss, val_loss, arithmetic, lr, seconds))
            log.info("epoch %d: train loss %.4f, validation loss %.4f, arithmetic R² %.4f, "
                     "lr %.2e, %.2f s", epoch, train_loss, val_loss, arithmetic, lr, seconds)
            if stop_on is None or epoch < p["min_epochs"]:
                continue
            score = arithmetic if stop_on == "arithmetic" else -val_loss
            if score > best_score:
                best_score, best_epoch = score, epoch
                if p["restore_best"]:
                    best_state = copy.deepcopy(self.vae.state_dict())
            if p["patience"] is not None and epoch - best_epoch >= p["patience"]:
                log.info("early stop at epoch %d: best %s at epoch %d", epoch, stop_on,
                         best_epoch)
                break
        self.kept_epoch = epoch
        if best_state is not None:
            log.info("restoring the weights of epoch %d (best %s)", best_epoch, stop_on)
            self.vae.load_state_dict(best_state)
            self.kept_epoch = best_epoch
        self.history = pd.DataFrame(rows, columns=["epoch", "train_loss", "val_loss",
                                                   "arithmetic_r2", "lr", "seconds"])

        self.set_delta(train, rng)

    def set_delta(self, train: ad.AnnData, rng: np.random.Generator) -> None:
        """The latent arithmetic of ``delta_groups`` on the trained VAE: one delta (``paired``,
        ``all``), or the responses of the training groups transferred by similarity or per cell
        (``pertflow.models.transfer``), with the transfer chosen leave-one-group-out in the latent space
        and scored on decoded genes."""
        p, k = self.params, self.keys
        X = as_csr(train.X)
        condition, groups = train.obs[k.condition].to_numpy(), train.obs[k.group].to_numpy()
        latent = latent_means(self.vae, X, self.device)
        self.responses = self.transfer = None
        if p["delta_groups"] in ("paired", "all"):
            self.delta = latent_delta(latent, condition, groups, k.control, k.perturbed, rng,
                                      p["restrict_arithmetic_to"], p["delta_groups"] == "paired")
            return
        if p["restrict_arithmetic_to"] is not None:
            keep = np.isin(groups, p["restrict_arithmetic_to"])
            X, latent, condition, groups = X[keep], latent[keep], condition[keep], groups[keep]
        self.responses = transfer.group_responses(latent, condition, groups, k.control,
                                                  k.perturbed, rng)
        method = "per_cell" if p["delta_groups"] == "transport" else "similarity"
        if method == "per_cell":
            transfer.transport(self.responses)
        targets = transfer.changed_genes(X, condition, groups, self.responses.names, k.control,
                                         k.perturbed, transfer.SCORE_GENES)
        self.choice = transfer.choose(method, self.responses, targets, self._decode_mean,
                                      linear=False)
        self.transfer = self.choice.record("scgen latent")

    def _decode_mean(self, Z: np.ndarray, genes: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(Z.astype(np.float32)).to(self.device)
        genes = torch.from_numpy(genes).to(self.device)
        return decode_genes(self.vae, z, genes).mean(0).cpu().numpy()

    def predict(self, control_cells: ad.AnnData) -> ad.AnnData:
        self._check_genes(control_cells)
        latent = latent_means(self.vae, as_csr(control_cells.X), self.device)
        if self.responses is None:
            delta = self.delta
        else:
            delta, weights = transfer.transferred(self.choice, self.responses, latent)
            self.transfer = self.choice.record("scgen latent", weights)
        predicted = decode(self.vae, (latent + delta).astype(np.float32), self.device)
        if self.params["prediction"] == "residual":
            # The VAE's reconstruction error and the cell's own variation stay out of the change.
            predicted += dense(control_cells.X) - decode(self.vae, latent, self.device)
        return self._prediction(control_cells, predicted)

    def embed(self, adata: ad.AnnData) -> dict[str, np.ndarray]:
        self._check_genes(adata)
        return {"X_scgen": latent_means(self.vae, as_csr(adata.X), self.device)}

    def _save_state(self, directory: Path) -> None:
        super()._save_state(directory)
        state = {"vae": self.vae.state_dict()}
        if self.responses is None:
            state["delta"] = torch.from_numpy(self.delta)
        else:
            np.savez(directory / "responses.npz", **self.responses.to_arrays())
        torch.save(state, directory / "model.pt")

    def _load_state(self, directory: Path) -> None:
        super()._load_state(directory)
        state = self._load_tensors(directory / "model.pt")
        self.vae = self._build(len(self.genes))
        self.vae.load_state_dict(state["vae"])
        self.vae.eval()
        self.responses = None
        if "delta" in state:
            self.delta = state["delta"].numpy()
        else:
            with np.load(directory / "responses.npz") as arrays:
                self.responses = transfer.Responses.from_arrays(arrays)
            self.choice = transfer.Choice.from_record(self.transfer)
