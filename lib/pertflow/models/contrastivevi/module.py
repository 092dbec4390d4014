"""contrastiveVI's torch and Pyro side: the networks, the minibatches they read, the Pyro model
and guide that define the model, and the same −ELBO written out for training.

Every cell has a background latent z ~ N(0, I) for the variation it shares with controls; only
perturbed cells have a salient latent t ~ N(0, I), and t = 0 for controls. The decoder maps
(z, t, covariates) to gene proportions and zero-inflation logits of a ZINB likelihood on raw
counts, with one inverse dispersion per gene. Encoders q(z|x) and q(t|x) read log1p of
size-normalised counts. Optional extras shape the salient space: a Wasserstein penalty pulling
the controls' salient posterior to a point mass at 0, and a linear classifier from the salient
mean (of the condition, or of every label of ``classifier_key``).

``ContrastiveVAE.loss`` computes what ``TraceMeanField_ELBO`` (or ``Trace_ELBO``) computes on
``model`` and ``guide``, drawing the guide's samples in the guide's order, without Pyro's traces
and reading the counts sparse: the encoders' first layer sums the weight columns of each cell's
expressed genes (``pertflow.models.sparse``), and the ZINB log-likelihood is computed for every
gene as if its count were 0, with its gradient written out (``_ZeroCountLogLikelihood``), then
corrected at the non-zero counts, so lgamma and its digamma gradient run on the non-zeros only.
tests/test_contrastivevi.py checks value and gradients against Pyro's on a fixed batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn
from torch.distributions import constraints

from pertflow.data.preprocess import TARGET_SUM
from pertflow.models.sparse import SparseRows, sparse_matmul

VARIANCE_FLOOR = 1e-4  # keeps posterior scales away from 0, as scvi-tools' encoders do
PENALTY = "_penalty"  # the name ending of the guide's penalty factors


# ---------------------------------------------------------------------------------------------
# Networks


class Hidden(nn.Module):
    """Fully connected layers (Linear, BatchNorm, ReLU, Dropout) with the covariates concatenated to
    every layer's input, as scvi-tools injects covariates."""

    def __init__(self, n_in: int, n_covariates: int, n_hidden: int, n_layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(width + n_covariates, n_hidden),
                          nn.BatchNorm1d(n_hidden, momentum=0.01, eps=1e-3),
                          nn.ReLU(), nn.Dropout(dropout))
            for width in [n_in] + [n_hidden] * (n_layers - 1))

    def forward(self, x: torch.Tensor | SparseRows, covariates: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if isinstance(x, SparseRows):  # the encoders' first layer on a sparse minibatch
                x = layer[1:](_sparse_linear(layer[0], x, covariates))
            else:
                x = layer(torch.cat([x, covariates], dim=-1))
        return x


def _sparse_linear(linear: nn.Linear, x: SparseRows, covariates: torch.Tensor) -> torch.Tensor:
    """``linear`` on [expression, covariates] with the expression read sparse; the weight keeps
    ``nn.Linear``'s layout, which the dense path (the Pyro guide) reads."""
    if not covariates.shape[1]:
        return sparse_matmul(x, linear.weight.t()) + linear.bias
    n_genes = x.shape[1]
    return (sparse_matmul(x, linear.weight[:, :n_genes].t())
            + F.linear(covariates, linear.weight[:, n_genes:]) + linear.bias)


class GaussianEncoder(nn.Module):
    """q(latent | x) = N(loc, scale²) from log1p-normalised expression and covariates."""

    def __init__(self, n_genes: int, n_covariates: int, n_latent: int, n_hidden: int,
                 n_layers: int, dropout: float):
        super().__init__()
        self.hidden = Hidden(n_genes, n_covariates, n_hidden, n_layers, dropout)
        self.loc = nn.Linear(n_hidden, n_latent)
        self.log_variance = nn.Linear(n_hidden, n_latent)

    def forward(self, expression: torch.Tensor | SparseRows, covariates: torch.Tensor):
        h = self.hidden(expression, covariates)
        return self.loc(h), (self.log_variance(h).exp() + VARIANCE_FLOOR).sqrt()


class Decoder(nn.Module):
    """(z, t, covariates) → log gene proportions and zero-inflation logits (no dropout, like
    scvi-tools' decoder)."""

    def __init__(self, n_latent: int, n_covariates: int, n_genes: int, n_hidden: int,
                 n_layers: int):
        super().__init__()
        self.hidden = Hidden(n_latent, n_covariates, n_hidden, n_layers, dropout=0.0)
        self.proportion_logits = nn.Linear(n_hidden, n_genes)
        self.zero_inflation_logits = nn.Linear(n_hidden, n_genes)

    def forward(self, latent: torch.Tensor, covariates: torch.Tensor):
        h = self.hidden(latent, covariates)
        return self.proportion_logits(h).log_softmax(-1), self.zero_inflation_logits(h)


# ---------------------------------------------------------------------------------------------
# Minibatches: control cells first, then perturbed cells. Each group sits in its own plate whose
# size is the group's total, so the minibatch's terms scale to an estimate of the full-data ELBO.


@dataclass(kw_only=True)
class Batch:
    covariates: torch.Tensor  # cells × one-hot covariates
    n_control: int
    control_total: int
    perturbed_total: int
    labels: torch.Tensor | None = None  # class of each cell for a multi-class classifier


@dataclass(kw_only=True)
class DenseBatch(Batch):
    """What the Pyro model and guide read."""

    counts: torch.Tensor  # cells × genes

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


@dataclass(kw_only=True)
class SparseBatch(Batch):
    """The same minibatch with the counts read sparse: what ``ContrastiveVAE.loss`` and the
    encoders at inference read."""

    counts: SparseRows  # with its column order (the first layer's backward by gene)
    library: torch.Tensor  # float32 total count per cell (exact: integers below 2**24)

    def __post_init__(self):
        x = self.counts
        self.flat = x.rows * x.shape[1] + x.indices  # into a flattened cells × genes
        # DenseBatch.normalised at the non-zeros, the same operations in the same order.
        self.expression = x.with_values(torch.log1p(x.values / self.library[x.rows] * TARGET_SUM))

    @property
    def log_library(self) -> torch.Tensor:
        return self.library.log()

    @property
    def scales(self) -> tuple[float, float]:
        """What the subsampled plates scale each group's terms by."""
        n_perturbed = len(self.library) - self.n_control
        return (self.control_total / max(self.n_control, 1),
                self.perturbed_total / max(n_perturbed, 1))


# ---------------------------------------------------------------------------------------------
# The ZINB log-likelihood on sparse counts


def zinb_log_likelihood(batch: SparseBatch, log_library: torch.Tensor,
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
    counts = batch.counts
    x, rows, r_x = counts.values, counts.rows, r[counts.indices]
    nb_logits = (log_library[rows] + log_proportions.reshape(-1)[batch.flat]
                 - r.log()[counts.indices])  # the dense l's operations, at the non-zeros
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


# ---------------------------------------------------------------------------------------------
# The model


class ContrastiveVAE(nn.Module):
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
        self.background_encoder = GaussianEncoder(n_latent=self.n_background, **encoder)
        self.salient_encoder = GaussianEncoder(n_latent=self.n_salient, **encoder)
        self.library_encoder = (GaussianEncoder(n_latent=1, **encoder) if self.latent_library
                                else None)
        self.decoder = Decoder(self.n_background + self.n_salient, n_covariates, n_genes, **width)
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

    def model(self, batch: DenseBatch, kl_weight: float = 1.0) -> None:
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

    def guide(self, batch: DenseBatch, kl_weight: float = 1.0) -> None:
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
                self._penalise("control_wasserstein" + PENALTY,
                               kl_weight * self.wasserstein_penalty * distance)
            self._classify("control_classifier" + PENALTY, t_loc[control], 0.0,
                           None if batch.labels is None else batch.labels[control])
        with perturbed_plate:
            with poutine.scale(scale=kl_weight):
                pyro.sample("z_perturbed",
                            dist.Normal(z_loc[perturbed], z_scale[perturbed]).to_event(1))
                pyro.sample("t", dist.Normal(t_loc[perturbed], t_scale[perturbed]).to_event(1))
            if self.latent_library:
                pyro.sample("log_library_perturbed",
                            dist.Normal(library_loc[perturbed], library_scale[perturbed]))
            self._classify("perturbed_classifier" + PENALTY, t_loc[perturbed], 1.0,
                           None if batch.labels is None else batch.labels[perturbed])

    def guide_without_penalties(self):
        """The guide with its penalty factors hidden: what the held-out ELBO scores."""
        return poutine.block(self.guide, hide_fn=lambda msg: msg["name"].endswith(PENALTY))

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
    def loss(self, batch: SparseBatch, kl_weight: float = 1.0, penalties: bool = True,
             closed_form_kl: bool | None = None):
        """What ``TraceMeanField_ELBO`` (``Trace_ELBO`` with ``elbo: trace``) minimises for
        ``model`` and ``guide`` on this minibatch: −ELBO with each plate's scale, plus the guide's
        penalty factors (``penalties=False``: without them, as the held-out ELBO). The guide's
        samples are drawn in the guide's order, so with the same random state the draws are
        Pyro's. ``closed_form_kl``: KL terms in closed form (mean-field) or as log q − log p at
        the draws (trace); by default as ``elbo``. Returns the loss and the per-cell
        log-likelihood of the counts."""
        closed_form_kl = self.mean_field if closed_form_kl is None else closed_form_kl
        expression = batch.expression
        z_loc, z_scale = self.background_encoder(expression, batch.covariates)
        t_loc, t_scale = self.salient_encoder(expression, batch.covariates)
        if self.latent_library:
            library_loc, library_scale = self.library_encoder(expression, batch.covariates)
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
            return self._standard_normal(n, dim, batch.library)

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
        log_likelihood = zinb_log_likelihood(batch, log_library, log_proportions,
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
