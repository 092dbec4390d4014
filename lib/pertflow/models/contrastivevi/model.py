"""contrastiveVI (Weinberger, Lin & Lee, Nature Methods 2023) as a pertflow model: its params,
``fit``, and what a fitted model gives. The networks and the Pyro model and guide are in
``module``, the training loop in ``training``.

As a predictor, held-out control cells keep their background posterior mean and get the mean
salient latent of the perturbed training cells (balanced over groups), or with ``salient_transfer``
the salient responses of the training groups whose controls' background resembles theirs
(``pertflow.models.transfer``: ``similarity`` weights each group's mean salient latent,
``transport`` gives each cell the deltas of its nearest training controls, paired with perturbed
cells by optimal transport in the background space); the decoded expected normalised expression
is mapped to the scale of ``X``, log1p(counts normalised to 1e4 per cell). ``prediction:
sampled`` instead draws one ZINB cell per control and normalises it exactly like ``X``, which
puts per-gene means and variances on X's footing (E[log1p(x)] < log1p(E[x])).

A Perturb-seq screen is analysed with the same model and keys: a derived condition column
(control vs any knockout) splits the cells, ``classifier_key`` names the knockout column, and no
group is held out (``pertflow.screen``, workflow/rules/screen.smk). ``embed`` gives every cell's
posterior means (controls' salient mean is their encoder's actual output, not 0),
``sample_latents`` posterior draws of both latents, and ``decode`` the expected expression of any
background and salient latents with given cells' covariates (latent differential expression).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import scipy.sparse as sp
import torch
from torch.distributions import constraints

from pertflow.data.preprocess import TARGET_SUM, check_counts
from pertflow.errors import DataError
from pertflow.models import transfer
from pertflow.models.base import register
from pertflow.models.contrastivevi import training
from pertflow.models.contrastivevi.module import ContrastiveVAE
from pertflow.models.sparse import as_csr
from pertflow.models.torch_base import TorchModel
from pertflow.utils import balanced_indices

COUNTS_LAYER = "counts"


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

    # ---- cells -----------------------------------------------------------------------------
    def cells(self, adata: ad.AnnData, labels: bool = False) -> training.Cells:
        """``adata``'s raw counts and one-hot covariates, checked, as the networks read them;
        with ``labels``, also the classifier's class of each cell."""
        return training.Cells(self._counts(adata), self._covariates(adata),
                              self._labels(adata) if labels else None, self.device)

    def _counts(self, adata: ad.AnnData) -> sp.csr_matrix:
        where = f"layers['{COUNTS_LAYER}']"
        if COUNTS_LAYER not in adata.layers:
            raise DataError(f"{where} is missing; contrastiveVI models raw counts, which "
                            "pertflow.data.preprocess keeps there. Say where the raw counts are "
                            "with the dataset's (or screen's) `counts:` key: `X`, "
                            "`{layer: NAME}`, or `recover` (from log-normalised X).")
        counts = as_csr(adata.layers[COUNTS_LAYER])
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
                            f"'{k.control}' or a perturbation such as '{k.perturbed}'. Set the "
                            "dataset's `condition_key` to the obs column that holds them.")
        condition = adata.obs[k.condition].astype(str).to_numpy()
        is_control = condition == k.control
        for mask, label in ((is_control, k.control), (condition == k.perturbed, k.perturbed)):
            if not mask.any():
                present = ", ".join(map(repr, sorted(set(condition))[:10]))
                raise DataError(
                    f"no cells labelled '{label}' in obs['{k.condition}'] (it holds {present}); "
                    "contrastiveVI needs both control and perturbed cells. Set the dataset's "
                    "`control` and `perturbed` to labels of its `condition_key` column (a "
                    "screen's `control` to the non-targeting label of its `perturbation_key`).")
        return is_control, ~is_control

    def _label_column(self, adata: ad.AnnData, key: str) -> pd.Series:
        if key not in adata.obs:
            raise DataError(f"obs['{key}'] (classifier_key) is missing; add the column or "
                            "unset `classifier_key`.")
        return adata.obs[key].astype(str)

    def _labels(self, adata: ad.AnnData) -> np.ndarray | None:
        """Each cell's class index in ``classifier_key`` (None without a multi-class
        classifier), using the classes seen in training."""
        if not self.label_categories:
            return None
        key = self.params["classifier_key"]
        column = self._label_column(adata, key)
        labels = pd.Categorical(column, categories=self.label_categories)
        if np.any(labels.codes < 0):
            unknown = sorted(set(column) - set(self.label_categories))
            raise DataError(f"obs['{key}'] has labels {unknown[:5]} not seen in training; the "
                            "classifier knows the training cells' labels only.")
        return labels.codes.astype(np.int64)

    # ---- training --------------------------------------------------------------------------
    def prepare(self, train: ad.AnnData) -> tuple[training.Cells, training.Split,
                                                  np.random.Generator]:
        """What ``fit`` does before its first step: check and encode the cells, seed, hold
        cells back for early stopping and build ``self.network``. Returns the cells, the split
        and the random generator training goes on with."""
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
        self.label_categories = (sorted(self._label_column(train, key).unique())
                                 if key is not None else [])
        labels = self._labels(train)
        self._start_training(train)
        rng = np.random.default_rng(self.seed)
        split = training.Split.hold_back(is_control, is_perturbed, p["validation_fraction"], rng)
        log_library = np.log(np.asarray(counts.sum(axis=1)).ravel())
        library_prior = (float(log_library.mean()), float(log_library.std()) + 1e-3)
        self.network = ContrastiveVAE(train.n_vars, covariates.shape[1], p, library_prior,
                                      len(self.label_categories)).to(self.device)
        return training.Cells(counts, covariates, labels, self.device), split, rng

    def _fit(self, train: ad.AnnData) -> None:
        cells, split, rng = self.prepare(train)
        with pyro.get_param_store().scope() as self.pyro_state:  # this model's dispersion
            self.history = pd.DataFrame(training.train(self.network, cells, split, self.params,
                                                       rng))
        self.set_salient_shift(train, rng)

    def set_salient_shift(self, train: ad.AnnData, rng: np.random.Generator) -> None:
        """The salient shift of ``salient_transfer`` on the trained model: the balanced mean
        (``average``), or the training groups' salient responses transferred by similarity or per
        cell (``pertflow.models.transfer``). Called by ``fit``; call again after changing the
        param."""
        cells = self.cells(train)
        self._condition_masks(train)  # both labels present
        is_perturbed = (train.obs[self.keys.condition] == self.keys.perturbed).to_numpy()
        self.salient_shift = self._balanced_salient_mean(train, cells, is_perturbed, rng)
        self.responses = self.transfer = None
        if self.params["salient_transfer"] != "average":
            self._choose_transfer(train, cells, rng)

    @torch.no_grad()
    def _posterior_means(self, cells: training.Cells) -> tuple[torch.Tensor, torch.Tensor]:
        """Background and salient posterior means, cells × dims each."""
        self.network.eval()
        background, salient = [], []
        for batch in cells.chunks():
            background.append(self.network.background_encoder(batch.expression,
                                                              batch.covariates)[0])
            salient.append(self.network.salient_encoder(batch.expression, batch.covariates)[0])
        return torch.cat(background), torch.cat(salient)

    def _balanced_salient_mean(self, train, cells, is_perturbed, rng) -> torch.Tensor:
        """Mean salient posterior mean of the perturbed training cells, every group resampled to
        the largest group's size so large cell types do not dominate the shift."""
        rows = np.flatnonzero(is_perturbed)
        rows = rows[balanced_indices(train.obs[self.keys.group].to_numpy()[rows], rng)]
        _, salient = self._posterior_means(cells.subset(rows))
        return salient.mean(0)

    def _choose_transfer(self, train, cells, rng) -> None:
        """The training groups' salient responses in (background, salient) coordinates, and the
        transfer chosen leave-one-group-out on decoded genes. Controls sit at salient 0, as the
        model has them, so similarities and neighbours are those of the background, and the
        transport cost differs from the background's by a constant per perturbed cell (the same
        plan); only the salient part of a response is transferred: each cell keeps its own
        background."""
        k, n_background = self.keys, self.network.n_background
        condition, groups = train.obs[k.condition].to_numpy(), train.obs[k.group].to_numpy()
        Z = torch.cat(self._posterior_means(cells), -1).cpu().numpy()
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
            return training.heldout_losses(self.network, self.cells(adata, labels=True),
                                           np.flatnonzero(is_control),
                                           np.flatnonzero(is_perturbed), by_pyro=True)

    def embed(self, adata: ad.AnnData) -> dict[str, np.ndarray]:
        """Posterior means of every cell's background and salient latents (cells × dims),
        controls included: their salient mean is the encoder's output (about 0 when the model
        learned to keep controls there), not the 0 the model fixes."""
        self._check_genes(adata)
        background, salient = self._posterior_means(self.cells(adata))
        return {"X_background": background.cpu().numpy(), "X_salient": salient.cpu().numpy()}

    @torch.no_grad()
    def sample_latents(self, adata: ad.AnnData, n_samples: int = 20,
                       seed: int | None = None) -> dict[str, np.ndarray]:
        """``n_samples`` draws of each cell's background and salient latents from the
        encoders' posteriors q(z|x), q(t|x), shaped samples × cells × dims; seeded (the
        model's seed by default) without disturbing the global random state."""
        self._check_genes(adata)
        self.network.eval()
        cells = self.cells(adata)
        generator = torch.Generator(device=self.device).manual_seed(
            self.seed if seed is None else seed)
        draws = {"background": [], "salient": []}
        for batch in cells.chunks():
            for name, encoder in (("background", self.network.background_encoder),
                                  ("salient", self.network.salient_encoder)):
                loc, scale = encoder(batch.expression, batch.covariates)
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
        (``pertflow.screen.de.latent_de``)."""
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
        for start in range(0, len(z), training.CHUNK):
            part = slice(start, start + training.CHUNK)
            log_proportions, _ = self.network.decoder(torch.cat([z[part], t[part]], -1),
                                                      covariates[part])
            out.append(torch.log1p(log_proportions.exp() * TARGET_SUM))
        return torch.cat(out).cpu().numpy()

    @torch.no_grad()
    def predict(self, control_cells: ad.AnnData) -> ad.AnnData:
        self._check_genes(control_cells)
        cells = self.cells(control_cells)
        background, _ = self._posterior_means(cells)
        salient = self.salient_shift.expand(background.shape[0], -1)
        if self.responses is not None:
            latent = torch.cat([background, torch.zeros_like(salient)], -1).cpu().numpy()
            delta, weights = transfer.transferred(self.choice, self.responses, latent)
            salient = torch.as_tensor(delta[:, background.shape[1]:], dtype=torch.float32,
                                      device=self.device).expand_as(salient)
            self.transfer = self.choice.record("contrastivevi background → salient", weights)
        log_proportions, zero_inflation_logits = self.network.decoder(
            torch.cat([background, salient], -1), cells.covariates)
        if self.params["prediction"] == "expected":
            X_pred = torch.log1p(log_proportions.exp() * TARGET_SUM)
        else:
            X_pred = self._sample_like_X(log_proportions, zero_inflation_logits, cells.counts)
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
                    "covariate_categories": self.covariate_categories,
                    "label_categories": self.label_categories},
                   directory / "state.pt")
        if self.responses is not None:
            np.savez(directory / "responses.npz", **self.responses.to_arrays())

    def _load_state(self, directory: Path) -> None:
        super()._load_state(directory)
        state = self._load_tensors(directory / "state.pt")
        self.covariate_categories = state["covariate_categories"]
        self.label_categories = state["label_categories"]
        n_covariates = sum(len(c) for c in self.covariate_categories.values())
        library_prior = tuple(state["network"]["library_prior"].tolist())
        self.network = ContrastiveVAE(len(self.genes), n_covariates, self.params, library_prior,
                                      len(self.label_categories))
        self.network.load_state_dict(state["network"])
        self.network.to(self.device)
        self.salient_shift = state["salient_shift"].to(self.device)
        self.responses = None
        if (directory / "responses.npz").exists():
            with np.load(directory / "responses.npz") as arrays:
                self.responses = transfer.Responses.from_arrays(arrays)
            self.choice = transfer.Choice.from_record(self.transfer)
        with pyro.get_param_store().scope() as self.pyro_state:
            pyro.param("inverse_dispersion", state["inverse_dispersion"].to(self.device),
                       constraint=constraints.positive)


def _covariate(adata: ad.AnnData, key: str) -> pd.Series:
    if key not in adata.obs:
        raise DataError(f"obs['{key}'] is missing but listed in `covariates` (the model's params, "
                        "or the screen's `covariates:`); add the column or remove it there.")
    return adata.obs[key].astype(str)
