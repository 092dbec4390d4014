"""contrastiveVI (Weinberger, Lin & Lee, Nature Methods 2023) written in Pyro.

Every cell has a background latent z ~ N(0, I) for the variation it shares with controls (cell type,
cell cycle, donor); only perturbed cells have a salient latent t ~ N(0, I), and t = 0 for controls.
A decoder maps (z, t, covariates) to gene proportions and zero-inflation logits of a ZINB likelihood
on raw counts, with one inverse dispersion per gene. Encoders q(z|x) and q(t|x) read log1p of
size-normalised counts. Two optional extras shape the salient space: a Wasserstein penalty pushing
the controls' salient posterior to a point mass at 0, and a linear classifier of the condition from
the salient mean.

Training mirrors scvi-tools' ``ContrastiveVI``: each step draws ``batch_size`` control and
``batch_size`` perturbed cells, an epoch runs through the larger group once, the KL weight ramps up
linearly over ``kl_warmup_epochs``, and the ELBO of held-back cells drives early stopping.

As a predictor, held-out control cells keep their background posterior mean and get the mean
salient latent of the perturbed training cells (balanced over groups), or with ``salient_transfer``
the salient responses of the training groups whose controls' background resembles theirs
(``pertflow.transfer``: ``similarity`` weights each group's mean salient latent, ``transport``
gives each cell the deltas of its nearest training controls, paired with perturbed cells by
optimal transport in the background space); the decoded expected
normalised expression is mapped to the scale of ``X``, log1p(counts normalised to 1e4 per cell).
``prediction: sampled`` instead draws one ZINB cell per control and normalises it exactly like
``X``, which puts per-gene means and variances on X's footing (E[log1p(x)] < log1p(E[x])).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import scipy.sparse as sp
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import ClippedAdam
from torch import nn
from torch.distributions import constraints

from pertflow import transfer
from pertflow.errors import ConfigError, DataError
from pertflow.models.base import Model, register
from pertflow.preprocess import check_counts
from pertflow.torch_utils import resolve_device, reuse_freed_memory, seed_everything
from pertflow.utils import balanced_indices, dense

log = logging.getLogger(__name__)

COUNTS_LAYER = "counts"
TARGET_SUM = 1e4  # X is log1p of counts normalised to this total per cell
CHUNK = 1024  # cells per forward pass outside training, to bound memory
VARIANCE_FLOOR = 1e-4  # keeps posterior scales away from 0, as scvi-tools' encoders do


def _is_penalty(msg: dict) -> bool:
    return msg["name"].endswith("_penalty")


class _Hidden(nn.Module):
    """Fully connected layers (Linear, BatchNorm, ReLU, Dropout) with the covariates concatenated to
    every layer's input, as scvi-tools injects covariates."""

    def __init__(self, n_in: int, n_covariates: int, n_hidden: int, n_layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(width + n_covariates, n_hidden),
                          nn.BatchNorm1d(n_hidden, momentum=0.01, eps=1e-3),
                          nn.ReLU(), nn.Dropout(dropout))
            for width in [n_in] + [n_hidden] * (n_layers - 1))

    def forward(self, x: torch.Tensor, covariates: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(torch.cat([x, covariates], dim=-1))
        return x


class _GaussianEncoder(nn.Module):
    """q(latent | x) = N(loc, scale²) from log1p-normalised expression and covariates."""

    def __init__(self, n_genes: int, n_covariates: int, n_latent: int, n_hidden: int,
                 n_layers: int, dropout: float):
        super().__init__()
        self.hidden = _Hidden(n_genes, n_covariates, n_hidden, n_layers, dropout)
        self.loc = nn.Linear(n_hidden, n_latent)
        self.log_variance = nn.Linear(n_hidden, n_latent)

    def forward(self, expression: torch.Tensor, covariates: torch.Tensor):
        h = self.hidden(expression, covariates)
        return self.loc(h), (self.log_variance(h).exp() + VARIANCE_FLOOR).sqrt()


class _Decoder(nn.Module):
    """(z, t, covariates) → log gene proportions and zero-inflation logits (no dropout, like
    scvi-tools' decoder)."""

    def __init__(self, n_latent: int, n_covariates: int, n_genes: int, n_hidden: int,
                 n_layers: int):
        super().__init__()
        self.hidden = _Hidden(n_latent, n_covariates, n_hidden, n_layers, dropout=0.0)
        self.proportion_logits = nn.Linear(n_hidden, n_genes)
        self.zero_inflation_logits = nn.Linear(n_hidden, n_genes)

    def forward(self, latent: torch.Tensor, covariates: torch.Tensor):
        h = self.hidden(latent, covariates)
        return self.proportion_logits(h).log_softmax(-1), self.zero_inflation_logits(h)


@dataclass
class _Batch:
    """Control cells first, then perturbed cells; each group sits in its own plate whose size is
    the group's total, so Pyro scales the minibatch to an estimate of the full-data ELBO."""

    counts: torch.Tensor
    covariates: torch.Tensor
    n_control: int
    control_total: int
    perturbed_total: int

    @property
    def log_library(self) -> torch.Tensor:
        return self.counts.sum(-1).log()

    @property
    def normalised(self) -> torch.Tensor:
        return torch.log1p(self.counts / self.counts.sum(-1, keepdim=True) * TARGET_SUM)

    def plates(self):
        n_control, n_perturbed = self.n_control, self.counts.shape[0] - self.n_control
        device = self.counts.device
        control = pyro.plate("control_cells", self.control_total,
                             subsample=torch.arange(n_control, device=device))
        perturbed = pyro.plate("perturbed_cells", self.perturbed_total,
                               subsample=torch.arange(n_perturbed, device=device))
        return (control, slice(0, n_control)), (perturbed, slice(n_control, None))


class _ContrastiveVAE(nn.Module):
    """The networks, and the Pyro model and guide that use them."""

    def __init__(self, n_genes: int, n_covariates: int, params: dict,
                 library_prior: tuple[float, float]):
        super().__init__()
        width = dict(n_hidden=params["n_hidden"], n_layers=params["n_layers"])
        self.n_background = params["n_background_latent"]
        self.n_salient = params["n_salient_latent"]
        self.latent_library = params["library"] == "latent"
        self.wasserstein_penalty = float(params["wasserstein_penalty"])
        self.classifier_weight = float(params["classifier_weight"])
        self.register_buffer("library_prior", torch.tensor(library_prior, dtype=torch.float32))
        encoder = dict(n_genes=n_genes, n_covariates=n_covariates,
                       dropout=params["dropout_rate"], **width)
        self.background_encoder = _GaussianEncoder(n_latent=self.n_background, **encoder)
        self.salient_encoder = _GaussianEncoder(n_latent=self.n_salient, **encoder)
        self.library_encoder = (_GaussianEncoder(n_latent=1, **encoder) if self.latent_library
                                else None)
        self.decoder = _Decoder(self.n_background + self.n_salient, n_covariates, n_genes, **width)
        self.classifier = nn.Linear(self.n_salient, 1) if self.classifier_weight > 0 else None
        self.n_genes = n_genes

    def _standard_normal(self, n: int, dim: int, like: torch.Tensor):
        return dist.Normal(like.new_zeros(()), like.new_ones(())).expand([n, dim]).to_event(1)

    def model(self, batch: _Batch, kl_weight: float = 1.0) -> None:
        pyro.module("decoder", self.decoder)
        inverse_dispersion = pyro.param(
            "inverse_dispersion", lambda: batch.counts.new_ones(self.n_genes),
            constraint=constraints.positive)
        (control_plate, control), (perturbed_plate, perturbed) = batch.plates()
        n_control = control.stop
        n_perturbed = batch.counts.shape[0] - n_control
        observed_library = batch.log_library
        # scvi-tools anneals only the z and t KL terms, not the library's.
        with control_plate:
            with poutine.scale(scale=kl_weight):
                z_control = pyro.sample("z_control", self._standard_normal(
                    n_control, self.n_background, batch.counts))
            library_control = self._log_library("control", observed_library[control])
        with perturbed_plate:
            with poutine.scale(scale=kl_weight):
                z_perturbed = pyro.sample("z_perturbed", self._standard_normal(
                    n_perturbed, self.n_background, batch.counts))
                t_perturbed = pyro.sample("t", self._standard_normal(
                    n_perturbed, self.n_salient, batch.counts))
            library_perturbed = self._log_library("perturbed", observed_library[perturbed])
        log_library = torch.cat([library_control, library_perturbed])

        z = torch.cat([z_control, z_perturbed])
        t = torch.cat([t_perturbed.new_zeros(n_control, self.n_salient), t_perturbed])
        log_proportions, zero_inflation_logits = self.decoder(torch.cat([z, t], -1),
                                                              batch.covariates)
        # NegativeBinomial(r, logits) has mean r·exp(logits), so logits = log(mean) − log(r).
        nb_logits = log_library.unsqueeze(-1) + log_proportions - inverse_dispersion.log()

        def likelihood(rows: slice):
            # The counts were checked once on input; re-validating every step costs ~5 % of it.
            return dist.ZeroInflatedNegativeBinomial(
                total_count=inverse_dispersion, logits=nb_logits[rows],
                gate_logits=zero_inflation_logits[rows], validate_args=False).to_event(1)

        with control_plate:
            pyro.sample("x_control", likelihood(control), obs=batch.counts[control])
        with perturbed_plate:
            pyro.sample("x_perturbed", likelihood(perturbed), obs=batch.counts[perturbed])

    def _log_library(self, group: str, observed: torch.Tensor) -> torch.Tensor:
        """The observed log library size, or a draw from its log-normal prior."""
        if not self.latent_library:
            return observed
        prior = dist.Normal(self.library_prior[0], self.library_prior[1])
        return pyro.sample(f"log_library_{group}", prior.expand([observed.shape[0]]))

    def guide(self, batch: _Batch, kl_weight: float = 1.0) -> None:
        pyro.module("background_encoder", self.background_encoder)
        pyro.module("salient_encoder", self.salient_encoder)
        expression = batch.normalised
        z_loc, z_scale = self.background_encoder(expression, batch.covariates)
        t_loc, t_scale = self.salient_encoder(expression, batch.covariates)
        if self.latent_library:
            pyro.module("library_encoder", self.library_encoder)
            library_loc, library_scale = self.library_encoder(expression, batch.covariates)
            library_loc, library_scale = library_loc.squeeze(-1), library_scale.squeeze(-1)
        if self.classifier is not None:
            pyro.module("classifier", self.classifier)
        (control_plate, control), (perturbed_plate, perturbed) = batch.plates()

        with control_plate:
            with poutine.scale(scale=kl_weight):
                pyro.sample("z_control", dist.Normal(z_loc[control], z_scale[control]).to_event(1))
            if self.latent_library:
                pyro.sample("log_library_control",
                            dist.Normal(library_loc[control], library_scale[control]))
            if self.wasserstein_penalty > 0:
                # Squared 2-Wasserstein distance of q(t|x) from a point mass at 0; scvi-tools
                # anneals it together with the KL terms.
                distance = (t_loc[control] ** 2 + t_scale[control] ** 2).sum(-1)
                self._penalise("control_wasserstein_penalty",
                               kl_weight * self.wasserstein_penalty * distance)
            self._classify("control_classifier_penalty", t_loc[control], label=0.0)
        with perturbed_plate:
            with poutine.scale(scale=kl_weight):
                pyro.sample("z_perturbed",
                            dist.Normal(z_loc[perturbed], z_scale[perturbed]).to_event(1))
                pyro.sample("t", dist.Normal(t_loc[perturbed], t_scale[perturbed]).to_event(1))
            if self.latent_library:
                pyro.sample("log_library_perturbed",
                            dist.Normal(library_loc[perturbed], library_scale[perturbed]))
            self._classify("perturbed_classifier_penalty", t_loc[perturbed], label=1.0)

    def _classify(self, name: str, salient_mean: torch.Tensor, label: float) -> None:
        """Cross-entropy of a linear classifier of the condition from the salient mean."""
        if self.classifier is None:
            return
        logits = self.classifier(salient_mean).squeeze(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits, torch.full_like(logits, label), reduction="none")
        self._penalise(name, self.classifier_weight * loss)

    @staticmethod
    def _penalise(name: str, penalty: torch.Tensor) -> None:
        # A factor in the guide enters the ELBO as part of log q, i.e. it is subtracted, so a
        # positive penalty here adds to the loss; the plate scales it like the other terms.
        pyro.factor(name, penalty, has_rsample=True)


@register("contrastivevi")
class ContrastiveVI(Model):
    """contrastiveVI in Pyro; defaults follow scvi-tools' ``scvi.external.ContrastiveVI``."""

    min_batch_cells = 2  # BatchNorm in the hidden layers

    defaults = {
        "n_hidden": 128,
        "n_background_latent": 10,
        "n_salient_latent": 10,
        "n_layers": 1,
        "dropout_rate": 0.1,
        "library": "observed",  # observed | latent (log-normal prior fitted to training cells)
        "covariates": [],  # obs keys, one-hot encoded into encoders and decoder
        "wasserstein_penalty": 0.0,
        "classifier_weight": 0.0,
        "elbo": "meanfield",  # meanfield (closed-form KL, as scvi-tools) | trace
        "batch_size": 128,  # per group: each step sees this many control and perturbed cells
        "lr": 1e-3,
        "weight_decay": 1e-6,
        "clip_norm": 10.0,
        "max_epochs": None,  # None: min(round(20000 / n_cells × 400), 400), as scvi-tools
        "kl_warmup_epochs": 400,
        "early_stopping_patience": 45,  # epochs without a better held-out ELBO; None: off
        "validation_fraction": 0.1,
        # expected: log1p(1e4 × decoded proportions); sampled: one ZINB draw per cell at its
        # own library size, normalised like X (matches X's per-gene means and variances).
        "prediction": "expected",
        # average | similarity | transport: see the module docstring; chosen leave-one-group-out
        "salient_transfer": "average",
        "device": "auto",
    }

    # ---- data ------------------------------------------------------------------------------
    def _counts(self, adata: ad.AnnData) -> sp.csr_matrix:
        where = f"layers['{COUNTS_LAYER}']"
        if COUNTS_LAYER not in adata.layers:
            raise DataError(f"{where} is missing; contrastiveVI models raw counts. Keep them in "
                            f"layers['{COUNTS_LAYER}'] (pertflow.preprocess does) or set "
                            "`counts:` in the dataset config.")
        counts = sp.csr_matrix(adata.layers[COUNTS_LAYER], dtype=np.float32)
        check_counts(counts, where)
        empty = np.flatnonzero(np.asarray(counts.sum(axis=1)).ravel() == 0)
        if empty.size:
            raise DataError(f"{where}: {empty.size} cell(s) have no counts (first: "
                            f"{adata.obs_names[empty[0]]}); filter them out with `qc: min_genes`.")
        return counts

    def _covariates(self, adata: ad.AnnData) -> np.ndarray:
        """One-hot covariates, using the categories seen in training."""
        blocks = [np.zeros((adata.n_obs, 0), dtype=np.float32)]
        for key, categories in self.covariate_categories.items():
            values = _covariate(adata, key).to_numpy()
            unknown = sorted(set(values) - set(categories))
            if unknown:
                raise DataError(f"obs['{key}'] has categories {unknown} not seen in training; "
                                "a covariate's categories must all occur in the training cells.")
            blocks.append((values[:, None] == np.asarray(categories)[None, :]).astype(np.float32))
        return np.concatenate(blocks, axis=1)

    def _check_genes(self, adata: ad.AnnData) -> None:
        if list(adata.var_names) != self.genes:
            raise DataError("cells to predict or embed have different genes from the training "
                            "cells; subset them to the training genes in the same order.")

    def _condition_masks(self, adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
        k = self.keys
        if k.condition not in adata.obs:
            raise DataError(f"obs['{k.condition}'] is missing; it must label each cell "
                            f"'{k.control}' or '{k.perturbed}'.")
        condition = adata.obs[k.condition].astype(str).to_numpy()
        is_control, is_perturbed = condition == k.control, condition == k.perturbed
        other = sorted(set(condition[~(is_control | is_perturbed)]))
        if other:
            raise DataError(f"obs['{k.condition}'] has labels {other} besides '{k.control}' and "
                            f"'{k.perturbed}'; drop those cells or fix `keys:` in the config.")
        for mask, label in ((is_control, k.control), (is_perturbed, k.perturbed)):
            if not mask.any():
                raise DataError(f"no cells labelled '{label}' in obs['{k.condition}']; "
                                "contrastiveVI needs both control and perturbed cells. Check "
                                "`keys: control/perturbed` in the config against the data.")
        return is_control, is_perturbed

    def _batch(self, counts: sp.csr_matrix, covariates: np.ndarray, control_rows: np.ndarray,
               perturbed_rows: np.ndarray, control_total: int, perturbed_total: int) -> _Batch:
        rows = np.concatenate([control_rows, perturbed_rows])
        counts, covariates = (torch.as_tensor(a, dtype=torch.float32, device=self.device)
                              for a in (dense(counts[rows]), covariates[rows]))
        return _Batch(counts, covariates, len(control_rows), control_total, perturbed_total)

    # ---- training --------------------------------------------------------------------------
    def _check_params(self) -> None:
        p = self.params
        choices = {"library": ("observed", "latent"), "elbo": ("meanfield", "trace"),
                   "prediction": ("expected", "sampled"),
                   "salient_transfer": ("average", "similarity", "transport")}
        for key, allowed in choices.items():
            if p[key] not in allowed:
                raise ConfigError(f"contrastivevi: `{key}: {p[key]}` is not one of {allowed}.")
        if not 0 <= p["validation_fraction"] < 1:
            raise ConfigError("contrastivevi: `validation_fraction` must be in [0, 1).")
        if p["salient_transfer"] != "average" and p["covariates"]:
            raise ConfigError(
                f"contrastivevi: `salient_transfer: {p['salient_transfer']}` chooses the transfer "
                "by decoding training cells without their covariates, so it needs `covariates: "
                "[]`. Drop the covariates or use `salient_transfer: average`.")

    def _fit(self, train: ad.AnnData) -> None:
        self._check_params()
        p = self.params
        counts = self._counts(train)
        is_control, is_perturbed = self._condition_masks(train)
        self.genes = list(train.var_names)
        if p["salient_transfer"] != "average":  # fails before training when no group has both
            transfer.require_paired_groups(*(train.obs[key].to_numpy() for key in (
                self.keys.condition, self.keys.group)), self.keys.control, self.keys.perturbed)
        self.covariate_categories = {key: sorted(_covariate(train, key).unique())
                                     for key in p["covariates"]}
        covariates = self._covariates(train)
        self.device = resolve_device(p["device"])
        seed_everything(self.seed)
        reuse_freed_memory()
        rng = np.random.default_rng(self.seed)

        control_train, control_val = _hold_back(np.flatnonzero(is_control),
                                                p["validation_fraction"], rng)
        perturbed_train, perturbed_val = _hold_back(np.flatnonzero(is_perturbed),
                                                    p["validation_fraction"], rng)
        validating = len(control_val) > 0 and len(perturbed_val) > 0
        log_library = np.log(np.asarray(counts.sum(axis=1)).ravel())
        library_prior = (float(log_library.mean()), float(log_library.std()) + 1e-3)
        self.network = _ContrastiveVAE(train.n_vars, covariates.shape[1], p,
                                       library_prior).to(self.device)
        elbo = TraceMeanField_ELBO() if p["elbo"] == "meanfield" else Trace_ELBO()
        optimiser = ClippedAdam({"lr": p["lr"], "eps": 0.01, "weight_decay": p["weight_decay"],
                                 "clip_norm": p["clip_norm"]})  # eps as scvi-tools' Adam
        svi = SVI(self.network.model, self.network.guide, optimiser, loss=elbo)
        max_epochs = p["max_epochs"] or min(round(20000 / train.n_obs * 400), 400)
        n_train = len(control_train) + len(perturbed_train)

        history, best, since_best = [], math.inf, 0
        with pyro.get_param_store().scope() as self.pyro_state:
            for epoch in range(max_epochs):
                started = time.perf_counter()
                # Linear KL warm-up as scvi-tools, shifted by one epoch: Pyro scales must be > 0.
                kl_weight = min(1.0, (epoch + 1) / max(p["kl_warmup_epochs"], 1))
                self.network.train()
                losses = [svi.step(self._batch(counts, covariates, c, t, len(control_train),
                                               len(perturbed_train)), kl_weight)
                          for c, t in _epoch_batches(control_train, perturbed_train,
                                                     p["batch_size"], rng)]
                row = {"epoch": epoch + 1, "kl_weight": kl_weight,
                       "train_loss": float(np.mean(losses)) / n_train}
                if validating:
                    heldout = self._heldout_losses(counts, covariates, control_val, perturbed_val)
                    row.update({f"validation_{name}": value for name, value in heldout.items()})
                row["seconds"] = time.perf_counter() - started
                history.append(row)
                log.info("epoch %d/%d  train −ELBO/cell %.2f  validation −ELBO/cell %s",
                         epoch + 1, max_epochs, row["train_loss"],
                         f"{row['validation_loss']:.2f}" if validating else "n/a")
                if validating:
                    if row["validation_loss"] < best:
                        best, since_best = row["validation_loss"], 0
                    else:
                        since_best += 1
                    patience = p["early_stopping_patience"]
                    if patience is not None and since_best >= patience:
                        log.info("early stopping after %d epochs: no improvement of the "
                                 "held-out ELBO in %d epochs", epoch + 1, since_best)
                        break
        self.history = pd.DataFrame(history)
        self.set_salient_shift(train, rng)

    def set_salient_shift(self, train: ad.AnnData, rng: np.random.Generator) -> None:
        """The salient shift of ``salient_transfer`` on the trained model: the balanced mean
        (``average``), or the training groups' salient responses transferred by similarity or per
        cell (``pertflow.transfer``). Called by ``fit``; call again after changing the param."""
        counts, covariates = self._counts(train), self._covariates(train)
        _, is_perturbed = self._condition_masks(train)
        self.salient_shift = self._salient_shift(train, counts, covariates, is_perturbed, rng)
        self.responses = self.transfer = None
        if self.params["salient_transfer"] != "average":
            self._choose_transfer(train, counts, covariates, rng)

    @torch.no_grad()
    def _heldout_losses(self, counts, covariates, control_rows, perturbed_rows) -> dict:
        """−ELBO and reconstruction loss (−log p(x | z, t, library)) per cell: a single-sample
        estimate with the full KL weight, no penalties and the networks in eval mode. Chunks keep
        both groups non-empty, and each plate covers its whole chunk, so nothing is rescaled."""
        self.network.eval()
        guide = poutine.block(self.network.guide, hide_fn=_is_penalty)
        n_chunks = min(math.ceil(max(len(control_rows), len(perturbed_rows)) / CHUNK),
                       len(control_rows), len(perturbed_rows))
        elbo = log_likelihood = 0.0
        for c, t in zip(np.array_split(control_rows, n_chunks),
                        np.array_split(perturbed_rows, n_chunks)):
            batch = self._batch(counts, covariates, c, t, len(c), len(t))
            guide_trace = poutine.trace(guide).get_trace(batch)
            model_trace = poutine.trace(
                poutine.replay(self.network.model, trace=guide_trace)).get_trace(batch)
            elbo += float(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
            log_likelihood += sum(float(model_trace.nodes[site]["log_prob_sum"])
                                  for site in ("x_control", "x_perturbed"))
        n_cells = len(control_rows) + len(perturbed_rows)
        return {"loss": -elbo / n_cells, "reconstruction_loss": -log_likelihood / n_cells}

    @torch.no_grad()
    def _posterior_means(self, counts: sp.csr_matrix, covariates: np.ndarray):
        self.network.eval()
        background, salient = [], []
        for start in range(0, counts.shape[0], CHUNK):
            rows = np.arange(start, min(start + CHUNK, counts.shape[0]))
            batch = self._batch(counts, covariates, rows, rows[:0], len(rows), 0)
            expression = batch.normalised
            background.append(self.network.background_encoder(expression, batch.covariates)[0])
            salient.append(self.network.salient_encoder(expression, batch.covariates)[0])
        return torch.cat(background), torch.cat(salient)

    def _salient_shift(self, train, counts, covariates, is_perturbed, rng) -> torch.Tensor:
        """Mean salient posterior mean of the perturbed training cells, every group resampled to
        the largest group's size so large cell types do not dominate the shift."""
        rows = np.flatnonzero(is_perturbed)
        rows = rows[balanced_indices(train.obs[self.keys.group].to_numpy()[rows], rng)]
        _, salient = self._posterior_means(counts[rows], covariates[rows])
        return salient.mean(0)

    def _choose_transfer(self, train, counts, covariates, rng) -> None:
        """The training groups' salient responses in (background, salient) coordinates, and the
        transfer chosen leave-one-group-out on decoded genes. Controls sit at salient 0, as the
        model has them, so similarities and neighbours are those of the background, and the
        transport cost differs from the background's by a constant per perturbed cell (the same
        plan); only the salient part of a response is transferred: each cell keeps its own
        background."""
        k, n_background = self.keys, self.network.n_background
        condition, groups = train.obs[k.condition].to_numpy(), train.obs[k.group].to_numpy()
        Z = torch.cat(self._posterior_means(counts, covariates), -1).cpu().numpy()
        Z[condition == k.control, n_background:] = 0
        responses = transfer.group_responses(Z, condition, groups, k.control, k.perturbed, rng)
        method = "per_cell" if self.params["salient_transfer"] == "transport" else "similarity"
        if method == "per_cell":
            transfer.transport(responses)
        for shifts in (responses.shifts, *responses.deltas):
            shifts[:, :n_background] = 0
        targets = transfer.changed_genes(train.X, condition, groups, responses.names, k.control,
                                         k.perturbed, transfer.SCORE_GENES)
        self.responses = responses
        self.choice = transfer.choose(method, responses, targets, self._decode_mean, linear=False)
        self.transfer = self.choice.record("contrastivevi background → salient")

    @torch.no_grad()
    def _decode_mean(self, Z: np.ndarray, genes: np.ndarray) -> np.ndarray:
        """Mean expected expression on X's scale of latent rows (no covariates)."""
        self.network.eval()
        z = torch.as_tensor(Z, dtype=torch.float32, device=self.device)
        log_proportions, _ = self.network.decoder(z, z.new_zeros(len(z), 0))
        genes = torch.as_tensor(genes, device=self.device)
        return torch.log1p(log_proportions[:, genes].exp() * TARGET_SUM).mean(0).cpu().numpy()

    # ---- use -------------------------------------------------------------------------------
    def evaluate(self, adata: ad.AnnData) -> dict[str, float]:
        """Per-cell −ELBO (``loss``) and ``reconstruction_loss`` of ``adata``'s cells, e.g. cells
        held out of training."""
        self._check_genes(adata)
        is_control, is_perturbed = self._condition_masks(adata)
        with pyro.get_param_store().scope(self.pyro_state):  # this model's learned dispersion
            return self._heldout_losses(self._counts(adata), self._covariates(adata),
                                        np.flatnonzero(is_control), np.flatnonzero(is_perturbed))

    def embed(self, adata: ad.AnnData) -> dict[str, np.ndarray]:
        self._check_genes(adata)
        background, salient = self._posterior_means(self._counts(adata), self._covariates(adata))
        return {"X_background": background.cpu().numpy(), "X_salient": salient.cpu().numpy()}

    @torch.no_grad()
    def predict(self, control_cells: ad.AnnData) -> ad.AnnData:
        self._check_genes(control_cells)
        counts, covariates = self._counts(control_cells), self._covariates(control_cells)
        background, _ = self._posterior_means(counts, covariates)
        salient = self.salient_shift.expand(background.shape[0], -1)
        if self.responses is not None:
            cells = torch.cat([background, torch.zeros_like(salient)], -1).cpu().numpy()
            delta, weights = transfer.transferred(self.choice, self.responses, cells)
            salient = torch.as_tensor(delta[:, background.shape[1]:], dtype=torch.float32,
                                      device=self.device).expand_as(salient)
            self.transfer = self.choice.record("contrastivevi background → salient", weights)
        log_proportions, zero_inflation_logits = self.network.decoder(
            torch.cat([background, salient], -1),
            torch.as_tensor(covariates, device=self.device))
        if self.params["prediction"] == "expected":
            X_pred = torch.log1p(log_proportions.exp() * TARGET_SUM)
        else:
            X_pred = self._sample_like_X(log_proportions, zero_inflation_logits, counts)
        return self._prediction(control_cells, X_pred.cpu().numpy().astype(np.float32))

    def _sample_like_X(self, log_proportions, zero_inflation_logits, counts) -> torch.Tensor:
        """One posterior-predictive cell per control: ZINB counts at the control's own library
        size, normalised and log1p-transformed exactly as X was. Unlike log1p of the expected
        proportions, its per-gene mean and variance are on X's footing (E[log1p] < log1p E)."""
        with pyro.get_param_store().scope(self.pyro_state):
            inverse_dispersion = pyro.param("inverse_dispersion")
        log_library = torch.as_tensor(np.log(np.asarray(counts.sum(axis=1))),
                                      dtype=torch.float32, device=self.device)
        likelihood = dist.ZeroInflatedNegativeBinomial(
            total_count=inverse_dispersion,
            logits=log_library + log_proportions - inverse_dispersion.log(),
            gate_logits=zero_inflation_logits)
        # Seeded without disturbing the global random state.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            sampled = likelihood.sample()
        total = sampled.sum(-1, keepdim=True).clamp_min(1.0)
        return torch.log1p(sampled / total * TARGET_SUM)

    # ---- persistence -----------------------------------------------------------------------
    def _save_state(self, directory: Path) -> None:
        with pyro.get_param_store().scope(self.pyro_state):
            inverse_dispersion = pyro.param("inverse_dispersion").detach().cpu()
        torch.save({"network": {k: v.cpu() for k, v in self.network.state_dict().items()},
                    "inverse_dispersion": inverse_dispersion,
                    "salient_shift": self.salient_shift.cpu(),
                    "responses": None if self.responses is None else _responses_state(
                        self.responses),
                    "genes": self.genes,
                    "covariate_categories": self.covariate_categories},
                   directory / "state.pt")
        self.history.to_csv(directory / "losses.csv", index=False)

    def _load_state(self, directory: Path) -> None:
        state = torch.load(directory / "state.pt", map_location="cpu", weights_only=True)
        self.device = resolve_device(self.params["device"])
        self.genes = state["genes"]
        self.covariate_categories = state["covariate_categories"]
        n_covariates = sum(len(c) for c in self.covariate_categories.values())
        library_prior = tuple(state["network"]["library_prior"].tolist())
        self.network = _ContrastiveVAE(len(self.genes), n_covariates, self.params, library_prior)
        self.network.load_state_dict(state["network"])
        self.network.to(self.device)
        self.salient_shift = state["salient_shift"].to(self.device)
        self.responses = None
        if state.get("responses") is not None:
            r = state["responses"]
            self.responses = transfer.Responses(
                r["names"], r["control_means"].numpy(), r["shifts"].numpy(),
                [c.numpy() for c in r["controls"]], [], [d.numpy() for d in r["deltas"]])
            self.choice = transfer.Choice.from_record(self.transfer)
        with pyro.get_param_store().scope() as self.pyro_state:
            pyro.param("inverse_dispersion", state["inverse_dispersion"].to(self.device),
                       constraint=constraints.positive)
        self.history = pd.read_csv(directory / "losses.csv")


def _responses_state(r: transfer.Responses) -> dict:
    """What prediction needs of the transfer's responses, as tensors (``weights_only`` loading)."""
    tensors = lambda arrays: [torch.from_numpy(np.asarray(a)) for a in arrays]  # noqa: E731
    return {"names": list(r.names), "control_means": torch.from_numpy(r.control_means),
            "shifts": torch.from_numpy(r.shifts),
            "controls": tensors(r.controls if r.deltas else []), "deltas": tensors(r.deltas)}


def _covariate(adata: ad.AnnData, key: str) -> pd.Series:
    if key not in adata.obs:
        raise DataError(f"obs['{key}'] is missing but listed under `covariates:`; add the column "
                        "or remove it from the model's params.")
    return adata.obs[key].astype(str)


def _hold_back(rows: np.ndarray, fraction: float, rng: np.random.Generator):
    """Split one group's rows into training and held-back rows, keeping at least one for
    training."""
    n_held = min(int(round(fraction * len(rows))), len(rows) - 1)
    shuffled = rng.permutation(rows)
    return np.sort(shuffled[n_held:]), np.sort(shuffled[:n_held])


def _epoch_batches(control_rows: np.ndarray, perturbed_rows: np.ndarray, batch_size: int,
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
