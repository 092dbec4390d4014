"""contrastiveVI (Weinberger, Lin & Lee, Nature Methods 2023) written in Pyro.

Every cell has a background latent z ~ N(0, I) for the variation it shares with controls (cell type,
cell cycle, donor); only perturbed cells have a salient latent t ~ N(0, I), and t = 0 for controls.
A decoder maps (z, t, covariates) to gene proportions and zero-inflation logits of a ZINB likelihood
on raw counts, with one inverse dispersion per gene. Encoders q(z|x) and q(t|x) read log1p of
size-normalised counts. Two optional extras shape the salient space: a Wasserstein penalty pushing
the controls' salient posterior to a point mass at 0, and a linear classifier from the salient
mean: of the condition (control vs perturbed), or with ``classifier_key`` of every perturbation
label, controls a class of their own (the original model's group classifier).

A Perturb-seq screen is analysed with the same model and keys: a derived condition column
(control vs any knockout) splits the cells, ``classifier_key`` names the knockout column, and no
group is held out (``pertflow.screen``, workflow/rules/screen.smk). ``embed`` gives every cell's
posterior means (controls' salient mean is their encoder's actual output, not 0),
``sample_latents`` posterior draws of both latents, and ``decode`` the expected expression of
any background and salient latents with given cells' covariates (latent differential
expression).

Training mirrors scvi-tools' ``ContrastiveVI``: each step draws ``batch_size`` control and
``batch_size`` perturbed cells, an epoch runs through the larger group once, the KL weight ramps up
linearly over ``kl_warmup_epochs``, and the ELBO of held-back cells drives early stopping.

As a predictor, held-out control cells keep their background posterior mean and get the mean
salient latent of the perturbed training cells (balanced over groups), or with ``salient_transfer``
the salient responses of the training groups whose controls' background resembles theirs
(``pertflow.models.transfer``: ``similarity`` weights each group's mean salient latent, ``transport``
gives each cell the deltas of its nearest training controls, paired with perturbed cells by
optimal transport in the background space); the decoded expected
normalised expression is mapped to the scale of ``X``, log1p(counts normalised to 1e4 per cell).
``prediction: sampled`` instead draws one ZINB cell per control and normalises it exactly like
``X``, which puts per-gene means and variances on X's footing (E[log1p(x)] < log1p(E[x])).

The Pyro ``model`` and ``guide`` are the definition. Training does not run them through Pyro's
generic trace machinery: ``_ContrastiveVAE.loss`` computes the same objective as
``TraceMeanField_ELBO`` (or ``Trace_ELBO``) on them, drawing the guide's samples in the guide's
order, but reads the counts sparse: minibatches are CSR rows; the encoders' first layer sums the
weight columns of each cell's expressed genes (``_SparseInputLinear``); the ZINB log-likelihood
is computed for every gene as if its count were 0, with its gradient written out
(``_ZeroCountLogLikelihood``), then corrected at the non-zero counts, so lgamma and its digamma
gradient run on the non-zeros only. One fused Adam makes Pyro's ``ClippedAdam`` update for every
parameter at once (``_ClippedAdam``). tests/test_contrastivevi.py checks that the loss and its
gradients equal Pyro's on a fixed batch, and the optimiser's update Pyro's; ``evaluate`` still
scores cells through the Pyro model and guide. bench/contrastivevi_profile.py shows where a step's
time goes, either way.
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
import torch.nn.functional as F
from pyro import poutine
from torch import nn
from torch.distributions import constraints

from pertflow.models import transfer
from pertflow.errors import DataError
from pertflow.models.base import register
from pertflow.models.torch_base import TorchModel
from pertflow.data.preprocess import TARGET_SUM, check_counts
from pertflow.utils import balanced_indices, dense

log = logging.getLogger(__name__)

COUNTS_LAYER = "counts"
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

    def forward(self, x: torch.Tensor | _SparseRows, covariates: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if isinstance(x, _SparseRows):  # the encoders' first layer on a sparse minibatch
                x = _sparse_linear(layer[0], x, covariates)
                for module in list(layer)[1:]:
                    x = module(x)
            else:
                x = layer(torch.cat([x, covariates], dim=-1))
        return x


def _sparse_linear(linear: nn.Linear, x: _SparseRows, covariates: torch.Tensor) -> torch.Tensor:
    """``linear`` applied to [expression, covariates] with the expression read sparse."""
    weight = linear.weight
    if not covariates.shape[1]:
        return _SparseInputLinear.apply(weight, x) + linear.bias
    return (_SparseInputLinear.apply(weight[:, :x.n_genes], x)
            + F.linear(covariates, weight[:, x.n_genes:]) + linear.bias)


class _SparseInputLinear(torch.autograd.Function):
    """expression @ weight.T for sparse rows: forward, each cell sums the weight columns of its
    expressed genes scaled by expression; backward, each gene sums the output gradients of the
    cells that express it, scaled by expression (both ``F.embedding_bag``, the backward over the
    batch's column-major order). Neither pass touches cells × genes, and the weight keeps
    ``nn.Linear``'s layout (saved models load as before)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, x: _SparseRows) -> torch.Tensor:
        ctx.x = x
        return F.embedding_bag(x.indices, weight.t().contiguous(), x.indptr, mode="sum",
                               per_sample_weights=x.expression, include_last_offset=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x = ctx.x
        by_gene = F.embedding_bag(x.rows_by_gene, grad, x.gene_indptr, mode="sum",
                                  per_sample_weights=x.expression[x.by_gene],
                                  include_last_offset=True)
        return by_gene.t(), None


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
    labels: torch.Tensor | None = None  # class of each cell for a multi-class classifier

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


@dataclass
class _SparseRows:
    """The same minibatch as ``_Batch``, with the counts as CSR rows (control cells first) on the
    training device: the fast training path reads it."""

    indptr: torch.Tensor  # int64, n_cells + 1
    indices: torch.Tensor  # int64 gene of each non-zero
    rows: torch.Tensor  # int64 cell of each non-zero
    counts: torch.Tensor  # float32 count of each non-zero
    library: torch.Tensor  # float32 total count per cell (exact: integers below 2**24)
    by_gene: torch.Tensor  # the non-zeros in column-major order (gene, then cell)
    rows_by_gene: torch.Tensor  # rows[by_gene]
    gene_indptr: torch.Tensor  # int64, n_genes + 1: where each gene's non-zeros start there
    covariates: torch.Tensor
    n_genes: int
    n_control: int
    control_total: int
    perturbed_total: int
    labels: torch.Tensor | None = None  # class of each cell for a multi-class classifier

    def __post_init__(self):
        self.flat = self.rows * self.n_genes + self.indices  # into a flattened cells × genes
        # _Batch.normalised at the non-zeros, the same operations in the same order.
        self.expression = torch.log1p(self.counts / self.library[self.rows] * TARGET_SUM)

    @property
    def log_library(self) -> torch.Tensor:
        return self.library.log()

    @property
    def scales(self) -> tuple[float, float]:
        """What the subsampled plates scale each group's terms by."""
        n_perturbed = len(self.library) - self.n_control
        return (self.control_total / max(self.n_control, 1),
                self.perturbed_total / max(n_perturbed, 1))


def _zinb_log_likelihood(batch: _SparseRows, log_library: torch.Tensor,
                         log_proportions: torch.Tensor, zero_inflation_logits: torch.Tensor,
                         inverse_dispersion: torch.Tensor) -> torch.Tensor:
    """Per cell, the sum over genes of ``dist.ZeroInflatedNegativeBinomial(total_count=r,
    logits=l, gate_logits=g).log_prob(counts)`` with l = log library + log proportions − log r,
    as the model has it, reading the counts sparse. Pyro computes log NB(x) = r·logσ(−l) +
    x·logσ(l) + lgamma(r + x) − lgamma(1 + x) − lgamma(r) and gives log(gate + (1 − gate)·NB(0))
    = softplus(log NB(0) − g) + log gate at x = 0, log NB(x) − g + log gate elsewhere, with
    log gate = −softplus(−g). At x = 0 every term of log NB but the first vanishes, so: every
    gene as if its count were 0 (dense, no lgamma; ``_ZeroCountLogLikelihood``), then at the
    non-zeros the difference to their true term."""
    r = inverse_dispersion
    as_if_zero = _ZeroCountLogLikelihood.apply(log_proportions, zero_inflation_logits,
                                               log_library, r)
    x, rows, r_x = batch.counts, batch.rows, r[batch.indices]
    nb_logits = (log_library[rows] + log_proportions.reshape(-1)[batch.flat]
                 - r.log()[batch.indices])  # the dense l's operations, at the non-zeros
    nb_zero_minus_gate = r_x * F.logsigmoid(-nb_logits) - zero_inflation_logits.reshape(-1)[
        batch.flat]
    correction = (nb_zero_minus_gate - F.softplus(nb_zero_minus_gate)
                  + x * F.logsigmoid(nb_logits)
                  + torch.lgamma(r_x + x) - torch.lgamma(1 + x) - torch.lgamma(r_x))
    return as_if_zero.index_add(0, rows, correction)


class _ZeroCountLogLikelihood(torch.autograd.Function):
    """Per cell, Σ over genes of log ZINB(0) = softplus(r·logσ(−l) − g) − softplus(−g), with
    l = log library + log proportions − log r, and its gradient written out: the same values as
    autograd through those operations, in fewer passes over the cells × genes arrays (the
    largest part of a step's elementwise work). With s = softplus(l) = −logσ(−l) and
    m = g + r·s, the term is softplus(−m) − softplus(−g), and w = σ(−m):
    ∂/∂g = σ(−g) − w, ∂/∂l = −w·r·σ(l), ∂/∂r = −Σ w·s − Σ ∂/∂l / r (r also enters l)."""

    @staticmethod
    def forward(ctx, log_proportions, gate_logits, log_library, r):
        nb_logits = log_library.unsqueeze(-1) + log_proportions - r.log()
        s = F.softplus(nb_logits)
        m = torch.addcmul(gate_logits, s, r)
        ctx.save_for_backward(nb_logits, gate_logits, r, s, m)
        return F.softplus(m.neg()).sum(-1) - F.softplus(gate_logits.neg()).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        nb_logits, gate_logits, r, s, m = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        w = torch.sigmoid(m.neg()).mul_(grad)
        grad_gate = torch.sigmoid(gate_logits.neg()).mul_(grad).sub_(w)
        grad_nb_logits = torch.sigmoid(nb_logits).mul_(w).mul_(r.neg())
        grad_library = grad_nb_logits.sum(-1) if ctx.needs_input_grad[2] else None
        grad_r = None
        if ctx.needs_input_grad[3]:
            grad_r = (w.mul_(s).sum(0) + grad_nb_logits.sum(0) / r).neg_()
        return grad_nb_logits, grad_gate, grad_library, grad_r


class _ContrastiveVAE(nn.Module):
    """The networks, and the Pyro model and guide that use them."""

    def __init__(self, n_genes: int, n_covariates: int, params: dict,
                 library_prior: tuple[float, float], n_classes: int = 0):
        """``n_classes`` > 0: the classifier predicts that many labels (``classifier_key``);
        0: the condition."""
        super().__init__()
        width = dict(n_hidden=params["n_hidden"], n_layers=params["n_layers"])
        self.n_background = params["n_background_latent"]
        self.n_salient = params["n_salient_latent"]
        self.latent_library = params["library"] == "latent"
        self.wasserstein_penalty = float(params["wasserstein_penalty"])
        self.classifier_weight = float(params["classifier_weight"])
        self.mean_field = params["elbo"] == "meanfield"  # closed-form KL; trace: sampled
        self.register_buffer("library_prior", torch.tensor(library_prior, dtype=torch.float32))
        encoder = dict(n_genes=n_genes, n_covariates=n_covariates,
                       dropout=params["dropout_rate"], **width)
        self.background_encoder = _GaussianEncoder(n_latent=self.n_background, **encoder)
        self.salient_encoder = _GaussianEncoder(n_latent=self.n_salient, **encoder)
        self.library_encoder = (_GaussianEncoder(n_latent=1, **encoder) if self.latent_library
                                else None)
        self.decoder = _Decoder(self.n_background + self.n_salient, n_covariates, n_genes, **width)
        self.n_classes = n_classes
        self.classifier = (nn.Linear(self.n_salient, n_classes or 1)
                           if self.classifier_weight > 0 else None)
        self.n_genes = n_genes

    def _standard_normal(self, n: int, dim: int, like: torch.Tensor):
        return dist.Normal(like.new_zeros(()), like.new_ones(())).expand([n, dim]).to_event(1)

    def inverse_dispersion(self) -> torch.Tensor:
        """The learned inverse dispersion per gene, a Pyro param of the current param store."""
        return pyro.param("inverse_dispersion", lambda: self.library_prior.new_ones(self.n_genes),
                          constraint=constraints.positive)

    def model(self, batch: _Batch, kl_weight: float = 1.0) -> None:
        pyro.module("decoder", self.decoder)
        inverse_dispersion = self.inverse_dispersion()
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
            # The counts were checked once on input; re-validating them every step is slow.
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
            self._classify("control_classifier_penalty", t_loc[control], 0.0,
                           None if batch.labels is None else batch.labels[control])
        with perturbed_plate:
            with poutine.scale(scale=kl_weight):
                pyro.sample("z_perturbed",
                            dist.Normal(z_loc[perturbed], z_scale[perturbed]).to_event(1))
                pyro.sample("t", dist.Normal(t_loc[perturbed], t_scale[perturbed]).to_event(1))
            if self.latent_library:
                pyro.sample("log_library_perturbed",
                            dist.Normal(library_loc[perturbed], library_scale[perturbed]))
            self._classify("perturbed_classifier_penalty", t_loc[perturbed], 1.0,
                           None if batch.labels is None else batch.labels[perturbed])

    def _classify(self, name: str, salient_mean: torch.Tensor, condition: float,
                  labels: torch.Tensor | None) -> None:
        """Cross-entropy of a linear classifier from the salient mean: of the condition
        (``condition``, 0 or 1), or with ``n_classes`` of each cell's class (``labels``)."""
        if self.classifier is None:
            return
        self._penalise(name, self.classifier_weight * self._classifier_loss(
            salient_mean, torch.full(salient_mean.shape[:1], condition,
                                     device=salient_mean.device), labels))

    def _classifier_loss(self, salient_mean: torch.Tensor, condition: torch.Tensor,
                         labels: torch.Tensor | None) -> torch.Tensor:
        """Per cell, the classifier's cross-entropy (binary on the condition, or multi-class
        on the labels)."""
        logits = self.classifier(salient_mean)
        if self.n_classes:
            if labels is None:
                raise ValueError("a multi-class classifier needs the batch's labels")
            return F.cross_entropy(logits, labels, reduction="none")
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), condition,
                                                  reduction="none")

    @staticmethod
    def _penalise(name: str, penalty: torch.Tensor) -> None:
        # A factor in the guide enters the ELBO as part of log q, i.e. it is subtracted, so a
        # positive penalty here adds to the loss; the plate scales it like the other terms.
        pyro.factor(name, penalty, has_rsample=True)

    # ---- the same objective without Pyro's trace machinery (training) -------------------------
    def loss(self, batch: _SparseRows, kl_weight: float = 1.0, penalties: bool = True,
             closed_form_kl: bool | None = None):
        """What ``TraceMeanField_ELBO`` (``Trace_ELBO`` with ``elbo: trace``) minimises for
        ``model`` and ``guide`` on this minibatch: −ELBO with each plate's scale, plus the guide's
        penalty factors (``penalties=False``: without them, as the held-out ELBO). The guide's
        samples are drawn in the guide's order, so with the same random state the draws are
        Pyro's. ``closed_form_kl``: KL terms in closed form (mean-field) or as log q − log p at
        the draws (trace); by default as ``elbo``. Returns the loss and the per-cell
        log-likelihood of the counts."""
        closed_form_kl = self.mean_field if closed_form_kl is None else closed_form_kl
        z_loc, z_scale = self.background_encoder(batch, batch.covariates)  # read sparse
        t_loc, t_scale = self.salient_encoder(batch, batch.covariates)
        if self.latent_library:
            library_loc, library_scale = self.library_encoder(batch, batch.covariates)
            library_loc, library_scale = library_loc.squeeze(-1), library_scale.squeeze(-1)
        n_control = batch.n_control
        n_perturbed = len(batch.library) - n_control
        control, perturbed = slice(0, n_control), slice(n_control, None)

        def draw(loc, scale, prior, event=True):
            """A reparametrised draw from q, and log q − log p per cell (sampled or closed
            form, as the ELBO estimator has it)."""
            q = dist.Normal(loc, scale, validate_args=False)
            q = q.to_event(1) if event else q
            value = q.rsample()
            if closed_form_kl:
                return value, torch.distributions.kl_divergence(q, prior)
            return value, q.log_prob(value) - prior.log_prob(value)

        def prior_normal(n, dim):
            return self._standard_normal(n, dim, batch.counts)

        def library_prior(n):
            return dist.Normal(self.library_prior[0], self.library_prior[1],
                               validate_args=False).expand([n])

        # The guide's draws, control plate first, then the perturbed one.
        z_control, kl_control = draw(z_loc[control], z_scale[control],
                                     prior_normal(n_control, self.n_background))
        kl_control = kl_weight * kl_control
        if self.latent_library:
            library_control, kl_library = draw(library_loc[control], library_scale[control],
                                               library_prior(n_control), event=False)
            kl_control = kl_control + kl_library
        z_perturbed, kl_z = draw(z_loc[perturbed], z_scale[perturbed],
                                 prior_normal(n_perturbed, self.n_background))
        t_perturbed, kl_t = draw(t_loc[perturbed], t_scale[perturbed],
                                 prior_normal(n_perturbed, self.n_salient))
        kl_perturbed = kl_weight * kl_z + kl_weight * kl_t
        if self.latent_library:
            library_perturbed, kl_library = draw(library_loc[perturbed],
                                                 library_scale[perturbed],
                                                 library_prior(n_perturbed), event=False)
            kl_perturbed = kl_perturbed + kl_library
            log_library = torch.cat([library_control, library_perturbed])
        else:
            log_library = batch.log_library

        z = torch.cat([z_control, z_perturbed])
        t = torch.cat([t_perturbed.new_zeros(n_control, self.n_salient), t_perturbed])
        log_proportions, zero_inflation_logits = self.decoder(torch.cat([z, t], -1),
                                                              batch.covariates)
        log_likelihood = _zinb_log_likelihood(batch, log_library, log_proportions,
                                              zero_inflation_logits, self.inverse_dispersion())
        per_cell = torch.cat([kl_control, kl_perturbed]) - log_likelihood
        if penalties:
            if self.wasserstein_penalty > 0:
                distance = (t_loc[control] ** 2 + t_scale[control] ** 2).sum(-1)
                per_cell = per_cell + torch.cat([
                    kl_weight * self.wasserstein_penalty * distance,
                    distance.new_zeros(n_perturbed)])
            if self.classifier is not None:
                condition = torch.cat([t_loc.new_zeros(n_control), t_loc.new_ones(n_perturbed)])
                per_cell = per_cell + self.classifier_weight * self._classifier_loss(
                    t_loc, condition, batch.labels)
        scale_control, scale_perturbed = batch.scales
        loss = (scale_control * per_cell[control].sum()
                + scale_perturbed * per_cell[perturbed].sum())
        return loss, log_likelihood


@register("contrastivevi")
class ContrastiveVI(TorchModel):
    """contrastiveVI in Pyro; defaults follow scvi-tools' ``scvi.external.ContrastiveVI``."""

    min_batch_cells = 2  # BatchNorm in the hidden layers
    label_categories: list[str] = []  # classifier_key's classes (set by fit; none: the condition)

    defaults = {
        "n_hidden": 128,
        "n_background_latent": 10,
        "n_salient_latent": 10,
        "n_layers": 1,
        "dropout_rate": 0.1,
        "library": "observed",  # latent: a log-normal prior fitted to the training cells
        "covariates": [],  # obs keys, one-hot encoded into encoders and decoder
        "wasserstein_penalty": 0.0,
        "classifier_weight": 0.0,
        "classifier_key": None,  # obs column: a multi-class classifier of its labels
        "elbo": "meanfield",  # meanfield: closed-form KL, as scvi-tools
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
        "salient_transfer": "average",  # see the module docstring
        "device": "auto",
    }

    param_help = {
        "n_hidden": "units per hidden layer of encoders and decoder",
        "n_background_latent": "dimensions of the background latent z (shared with controls)",
        "n_salient_latent": "dimensions of the salient latent t (perturbed cells only)",
        "n_layers": "hidden layers of encoders and decoder",
        "dropout_rate": "dropout after each hidden layer",
        "library": "library size: observed, or latent (a log-normal prior fitted to training "
                   "cells)",
        "covariates": "obs columns one-hot encoded into encoders and decoder",
        "wasserstein_penalty": "weight of the penalty pulling controls' salient posterior to 0",
        "classifier_weight": "weight of a linear classifier of the condition from the salient "
                             "mean",
        "classifier_key": "obs column whose labels the classifier predicts (multi-class, "
                          "controls a class; e.g. a screen's perturbation); null: the condition",
        "elbo": "meanfield: closed-form KL (as scvi-tools); trace: sampled KL",
        "batch_size": "control and perturbed cells each per training step",
        "lr": "Adam learning rate",
        "weight_decay": "Adam weight decay",
        "clip_norm": "gradient-norm clipping of the optimiser (Pyro's ClippedAdam)",
        "max_epochs": "most training epochs (null: min(20000 / cells × 400, 400), as scvi-tools)",
        "kl_warmup_epochs": "epochs over which the KL weight ramps up to 1",
        "early_stopping_patience": "epochs without a better held-out ELBO before stopping "
                                   "(null: off)",
        "validation_fraction": "fraction of training cells held back for early stopping",
        "prediction": "expected: decoded mean expression; sampled: one ZINB draw per cell, "
                      "normalised like X",
        "salient_transfer": "salient shift given to held-out cells: the average, similar "
                            "groups' (similarity) or per-cell deltas (transport)",
        "device": "where to train: auto (a GPU when the job sees one), cpu, cuda or cuda:n",
    }

    choices = {
        "library": ("observed", "latent"),
        "elbo": ("meanfield", "trace"),
        "prediction": ("expected", "sampled"),
        "salient_transfer": ("average", "similarity", "transport"),
    }

    @classmethod
    def _check_param_rules(cls, params: dict, where: str) -> None:
        super()._check_param_rules(params, where)
        if params["salient_transfer"] != "average" and params["covariates"]:
            # The transfer is chosen by decoding training cells without their covariates.
            raise cls.param_error(where, "salient_transfer", params["salient_transfer"],
                                  "'average' with covariates, or drop the covariates "
                                  "(`covariates: []`) to transfer")

    # ---- data ------------------------------------------------------------------------------
    def _counts(self, adata: ad.AnnData) -> sp.csr_matrix:
        where = f"layers['{COUNTS_LAYER}']"
        if COUNTS_LAYER not in adata.layers:
            raise DataError(f"{where} is missing; contrastiveVI models raw counts. Keep them in "
                            f"layers['{COUNTS_LAYER}'] (pertflow.data.preprocess does) or set "
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

    def _condition_masks(self, adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
        """Control cells, and target cells: those of any other label (in a dataset of several
        perturbations every perturbation trains the salient space; the shift uses
        ``keys.perturbed``'s cells alone)."""
        k = self.keys
        if k.condition not in adata.obs:
            raise DataError(f"obs['{k.condition}'] is missing; it must label each cell "
                            f"'{k.control}' or a perturbation such as '{k.perturbed}'.")
        condition = adata.obs[k.condition].astype(str).to_numpy()
        is_control = condition == k.control
        for mask, label in ((is_control, k.control), (condition == k.perturbed, k.perturbed)):
            if not mask.any():
                raise DataError(f"no cells labelled '{label}' in obs['{k.condition}']; "
                                "contrastiveVI needs both control and perturbed cells. Check "
                                "`keys: control/perturbed` in the config against the data.")
        return is_control, ~is_control

    def _labels(self, adata: ad.AnnData) -> np.ndarray | None:
        """Each cell's class index in ``classifier_key`` (None without a multi-class
        classifier), using the classes seen in training."""
        if not self.label_categories:
            return None
        key = self.params["classifier_key"]
        if key not in adata.obs:
            raise DataError(f"obs['{key}'] (classifier_key) is missing; add the column or "
                            "unset `classifier_key`.")
        labels = pd.Categorical(adata.obs[key].astype(str), categories=self.label_categories)
        if np.any(labels.codes < 0):
            unknown = sorted(set(adata.obs[key].astype(str)) - set(self.label_categories))
            raise DataError(f"obs['{key}'] has labels {unknown[:5]} not seen in training.")
        return labels.codes.astype(np.int64)

    def _batch(self, counts: sp.csr_matrix, covariates: np.ndarray, control_rows: np.ndarray,
               perturbed_rows: np.ndarray, control_total: int, perturbed_total: int,
               labels: np.ndarray | None = None) -> _Batch:
        rows = np.concatenate([control_rows, perturbed_rows])
        counts, covariates = (torch.as_tensor(a, dtype=torch.float32, device=self.device)
                              for a in (dense(counts[rows]), covariates[rows]))
        labels = None if labels is None else torch.as_tensor(labels[rows], device=self.device)
        return _Batch(counts, covariates, len(control_rows), control_total, perturbed_total,
                      labels)

    def _training_data(self, counts: sp.csr_matrix, covariates: np.ndarray,
                       labels: np.ndarray | None = None) -> dict:
        """What ``_sparse_batch`` slices minibatches from: the CSR counts, each cell's library
        size, the covariates and the classifier's labels, if any (on the device, indexed
        there)."""
        return {"counts": counts, "library": np.asarray(counts.sum(axis=1), np.float32).ravel(),
                "covariates": torch.as_tensor(covariates, dtype=torch.float32,
                                              device=self.device),
                "labels": None if labels is None else torch.as_tensor(labels,
                                                                      device=self.device)}

    def _sparse_batch(self, data: dict, control_rows: np.ndarray, perturbed_rows: np.ndarray,
                      control_total: int, perturbed_total: int) -> _SparseRows:
        rows = np.concatenate([control_rows, perturbed_rows])
        part = data["counts"][rows]
        # Column-major order of the non-zeros: CSC of their positions (rows sorted per gene).
        columns = sp.csr_matrix((np.arange(part.nnz, dtype=np.int64), part.indices,
                                 part.indptr), shape=part.shape).tocsc()
        arrays = (part.indptr, part.indices, np.repeat(np.arange(len(rows)), np.diff(part.indptr)),
                  part.data, data["library"][rows], columns.data, columns.indices,
                  columns.indptr)
        tensors = [torch.from_numpy(np.asarray(a, dtype=np.int64 if a.dtype.kind in "iu"
                                               else np.float32)) for a in arrays]
        if self.device.type == "cuda":  # page-locked host memory: the copy overlaps compute
            tensors = [t.pin_memory().to(self.device, non_blocking=True) for t in tensors]
        on_device = torch.as_tensor(rows, device=self.device)
        labels = None if data.get("labels") is None else data["labels"][on_device]
        return _SparseRows(*tensors, data["covariates"][on_device], part.shape[1],
                           len(control_rows), control_total, perturbed_total, labels)

    def _optimiser(self) -> _ClippedAdam:
        """Every parameter, the networks' and the inverse dispersion's unconstrained value, in
        one optimiser. Call inside the model's param store scope."""
        p = self.params
        parameters = [*self.network.parameters(),
                      self.network.inverse_dispersion().unconstrained()]
        return _ClippedAdam(parameters, lr=p["lr"], eps=0.01, weight_decay=p["weight_decay"],
                            clip_norm=p["clip_norm"])  # eps as scvi-tools' Adam

    # ---- training --------------------------------------------------------------------------
    def _fit(self, train: ad.AnnData) -> None:
        p = self.params
        counts = self._counts(train)
        is_control, is_perturbed = self._condition_masks(train)
        if p["salient_transfer"] != "average":  # fails before training when no group has both
            transfer.require_paired_groups(*(train.obs[key].to_numpy() for key in (
                self.keys.condition, self.keys.group)), self.keys.control, self.keys.perturbed)
        self.covariate_categories = {key: sorted(_covariate(train, key).unique())
                                     for key in p["covariates"]}
        covariates = self._covariates(train)
        key = p["classifier_key"] if p["classifier_weight"] > 0 else None
        if key is not None and key not in train.obs:
            raise DataError(f"obs['{key}'] (classifier_key) is missing; add the column or "
                            "unset `classifier_key`.")
        self.label_categories = (sorted(train.obs[key].astype(str).unique()) if key is not None
                                 else [])
        labels = self._labels(train)
        self._start_training(train)
        rng = np.random.default_rng(self.seed)

        control_train, control_val = _hold_back(np.flatnonzero(is_control),
                                                p["validation_fraction"], rng)
        perturbed_train, perturbed_val = _hold_back(np.flatnonzero(is_perturbed),
                                                    p["validation_fraction"], rng)
        validating = len(control_val) > 0 and len(perturbed_val) > 0
        log_library = np.log(np.asarray(counts.sum(axis=1)).ravel())
        library_prior = (float(log_library.mean()), float(log_library.std()) + 1e-3)
        self.network = _ContrastiveVAE(train.n_vars, covariates.shape[1], p, library_prior,
                                       len(self.label_categories)).to(self.device)
        data = self._training_data(counts, covariates, labels)
        max_epochs = p["max_epochs"] or min(round(20000 / train.n_obs * 400), 400)
        n_train = len(control_train) + len(perturbed_train)

        history, best, since_best = [], math.inf, 0
        with pyro.get_param_store().scope() as self.pyro_state:
            optimiser = self._optimiser()
            for epoch in range(max_epochs):
                started = time.perf_counter()
                # Linear KL warm-up as scvi-tools, shifted by one epoch: Pyro scales must be > 0.
                kl_weight = min(1.0, (epoch + 1) / max(p["kl_warmup_epochs"], 1))
                self.network.train()
                losses = []
                for c, t in _epoch_batches(control_train, perturbed_train, p["batch_size"],
                                           rng):
                    batch = self._sparse_batch(data, c, t, len(control_train),
                                               len(perturbed_train))
                    loss, _ = self.network.loss(batch, kl_weight)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    losses.append(loss.detach())  # read once per epoch: no sync per step
                row = {"epoch": epoch + 1, "kl_weight": kl_weight,
                       "train_loss": float(np.mean([float(x) for x in losses])) / n_train}
                if validating:
                    heldout = self._heldout_losses(counts, covariates, control_val, perturbed_val,
                                                   data=data)
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
        cell (``pertflow.models.transfer``). Called by ``fit``; call again after changing the param."""
        counts, covariates = self._counts(train), self._covariates(train)
        self._condition_masks(train)
        is_perturbed = (train.obs[self.keys.condition] == self.keys.perturbed).to_numpy()
        self.salient_shift = self._salient_shift(train, counts, covariates, is_perturbed, rng)
        self.responses = self.transfer = None
        if self.params["salient_transfer"] != "average":
            self._choose_transfer(train, counts, covariates, rng)

    @torch.no_grad()
    def _heldout_losses(self, counts, covariates, control_rows, perturbed_rows,
                        data: dict | None = None, labels: np.ndarray | None = None) -> dict:
        """−ELBO and reconstruction loss (−log p(x | z, t, library)) per cell: a single-sample
        estimate with the full KL weight, no penalties and the networks in eval mode. Chunks keep
        both groups non-empty, and each plate covers its whole chunk, so nothing is rescaled.
        With ``data`` (``_training_data``), by the training path's loss; without, through the
        Pyro model and guide (``labels``: the classifier's, which its blocked penalty reads)."""
        self.network.eval()
        guide = poutine.block(self.network.guide, hide_fn=_is_penalty)
        n_chunks = min(math.ceil(max(len(control_rows), len(perturbed_rows)) / CHUNK),
                       len(control_rows), len(perturbed_rows))
        elbo = log_likelihood = 0.0
        for c, t in zip(np.array_split(control_rows, n_chunks),
                        np.array_split(perturbed_rows, n_chunks)):
            if data is not None:
                loss, per_cell = self.network.loss(  # log p − log q at the draws, as below
                    self._sparse_batch(data, c, t, len(c), len(t)), penalties=False,
                    closed_form_kl=False)
                elbo -= float(loss)
                log_likelihood += float(per_cell.sum())
                continue
            batch = self._batch(counts, covariates, c, t, len(c), len(t), labels)
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
        data = self._training_data(counts, covariates)
        background, salient = [], []
        for start in range(0, counts.shape[0], CHUNK):
            rows = np.arange(start, min(start + CHUNK, counts.shape[0]))
            batch = self._sparse_batch(data, rows, rows[:0], len(rows), 0)
            background.append(self.network.background_encoder(batch, batch.covariates)[0])
            salient.append(self.network.salient_encoder(batch, batch.covariates)[0])
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
                                        np.flatnonzero(is_control), np.flatnonzero(is_perturbed),
                                        labels=self._labels(adata))

    def embed(self, adata: ad.AnnData) -> dict[str, np.ndarray]:
        """Posterior means of every cell's background and salient latents (cells × dims),
        controls included: their salient mean is the encoder's output (about 0 when the model
        learned to keep controls there), not the 0 the model fixes."""
        self._check_genes(adata)
        background, salient = self._posterior_means(self._counts(adata), self._covariates(adata))
        return {"X_background": background.cpu().numpy(), "X_salient": salient.cpu().numpy()}

    @torch.no_grad()
    def sample_latents(self, adata: ad.AnnData, n_samples: int = 20,
                       seed: int | None = None) -> dict[str, np.ndarray]:
        """``n_samples`` draws of each cell's background and salient latents from the
        encoders' posteriors q(z|x), q(t|x), shaped samples × cells × dims; seeded (the
        model's seed by default) without disturbing the global random state."""
        self._check_genes(adata)
        self.network.eval()
        counts = self._counts(adata)
        data = self._training_data(counts, self._covariates(adata))
        generator = torch.Generator(device=self.device).manual_seed(
            self.seed if seed is None else seed)
        draws = {"background": [], "salient": []}
        for start in range(0, counts.shape[0], CHUNK):
            rows = np.arange(start, min(start + CHUNK, counts.shape[0]))
            batch = self._sparse_batch(data, rows, rows[:0], len(rows), 0)
            for name, encoder in (("background", self.network.background_encoder),
                                  ("salient", self.network.salient_encoder)):
                loc, scale = encoder(batch, batch.covariates)
                noise = torch.randn((n_samples, *loc.shape), generator=generator,
                                    device=self.device)
                draws[name].append(loc + scale * noise)
        return {name: torch.cat(parts, 1).cpu().numpy() for name, parts in draws.items()}

    @torch.no_grad()
    def decode(self, background: np.ndarray, salient: np.ndarray,
               cells: ad.AnnData | None = None) -> np.ndarray:
        """Expected expression on X's scale, log1p(1e4 × decoded proportions), of latent rows
        (cells × dims each) with the covariates of ``cells`` (one row each; needed when the
        model has covariates). With the background of real cells and their salient latent set
        to a perturbation's mean or to 0, the difference is latent differential expression
        (``pertflow.screen.latent_de``)."""
        self.network.eval()
        z = torch.as_tensor(np.array(background), dtype=torch.float32, device=self.device)
        t = torch.as_tensor(np.array(salient), dtype=torch.float32, device=self.device)
        if cells is None:
            if self.covariate_categories:
                raise ValueError("decode needs the cells whose covariates to decode with")
            covariates = z.new_zeros(len(z), 0)
        else:
            if cells.n_obs != len(z):
                raise ValueError(f"{cells.n_obs} cells for {len(z)} latent rows")
            covariates = torch.as_tensor(self._covariates(cells), device=self.device)
        out = []
        for start in range(0, len(z), CHUNK):
            part = slice(start, start + CHUNK)
            log_proportions, _ = self.network.decoder(torch.cat([z[part], t[part]], -1),
                                                      covariates[part])
            out.append(torch.log1p(log_proportions.exp() * TARGET_SUM))
        return torch.cat(out).cpu().numpy()

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
        super()._save_state(directory)
        with pyro.get_param_store().scope(self.pyro_state):
            inverse_dispersion = pyro.param("inverse_dispersion").detach().cpu()
        torch.save({"network": {k: v.cpu() for k, v in self.network.state_dict().items()},
                    "inverse_dispersion": inverse_dispersion,
                    "salient_shift": self.salient_shift.cpu(),
                    "responses": None if self.responses is None else _responses_state(
                        self.responses),
                    "covariate_categories": self.covariate_categories,
                    "label_categories": self.label_categories},
                   directory / "state.pt")

    def _load_state(self, directory: Path) -> None:
        super()._load_state(directory)
        state = self._load_tensors(directory / "state.pt")
        self.covariate_categories = state["covariate_categories"]
        self.label_categories = state.get("label_categories") or []
        n_covariates = sum(len(c) for c in self.covariate_categories.values())
        library_prior = tuple(state["network"]["library_prior"].tolist())
        self.network = _ContrastiveVAE(len(self.genes), n_covariates, self.params, library_prior,
                                       len(self.label_categories))
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


def _responses_state(r: transfer.Responses) -> dict:
    """What prediction needs of the transfer's responses, as tensors (``weights_only`` loading)."""
    tensors = lambda arrays: [torch.from_numpy(np.asarray(a)) for a in arrays]  # noqa: E731
    return {"names": list(r.names), "control_means": torch.from_numpy(r.control_means),
            "shifts": torch.from_numpy(r.shifts),
            "controls": tensors(r.controls if r.deltas else []), "deltas": tensors(r.deltas)}


class _ClippedAdam(torch.optim.Adam):
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
