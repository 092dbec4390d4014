"""A small scGPT-style transformer trained from scratch: cells as sequences of gene tokens.

Cui et al. (Nature Methods 2024) represent a cell as a set of (gene, binned expression) tokens
and learn by predicting masked expression values. Pretrained weights are not available here, so
this module builds the same kind of model at a size that trains on one dataset, then uses it for
scGen-style leave-one-cell-type-out prediction.

Tokens. Position i of a cell's sequence carries
    gene_embedding[gene_i] + value_embedding[bin_i] + condition_embedding[condition]
and a learned ``<cls>`` token comes first. Bins are per cell (scGPT's value binning): a zero stays
bin 0; non-zero values fall into bins 1..n_bins-1 at the cell's own quantiles, so sequencing depth
does not change the tokens. There is no positional embedding: the gene identity is the position.

Sequences. A cell with more than ``max_genes`` genes is represented by a random subset: up to
half the slots hold genes the cell expresses (they say what the cell is; most genes of a
droplet cell are zero) and the rest is a uniform draw of its remaining genes (mostly zeros, which
is where a perturbation switches genes on). Prediction covers every gene: the expressed context is
kept and the remaining genes are queried in chunks beside it.

Training.
  1. Masked-value modelling on every training cell with its own condition token: a fraction of
     value tokens is replaced by a mask token and their continuous expression is predicted (MSE).
  2. Perturbation fine-tuning: a control cell of a training group, given the perturbed condition
     token, predicts the expression of a perturbed cell of the same group, drawn at random and
     re-drawn every epoch (scGPT's fine-tuning likewise pairs control and perturbed cells).
Prediction: the held-out group's control cells with the perturbed condition token.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from pertflow.models.base import Model, register
from pertflow.torch_utils import resolve_device, reuse_freed_memory, seed_everything
from pertflow.utils import dense

log = logging.getLogger(__name__)

CONTROL, PERTURBED = 0, 1  # condition token ids


# ----------------------------------------------------------------------------- tokenisation

def bin_expression(X, n_bins: int) -> sp.csr_matrix:
    """Per-cell value bins (scGPT): 0 for zero, 1..n_bins-1 by the cell's non-zero quantiles.

    Returns an integer CSR matrix with the sparsity pattern of ``X``."""
    X = sp.csr_matrix(X, dtype=np.float32)
    X.eliminate_zeros()
    bins = np.zeros(X.nnz, dtype=np.int64)
    quantiles = np.linspace(0.0, 1.0, n_bins)[1:-1]  # n_bins-2 interior edges → n_bins-1 bins
    for row in range(X.shape[0]):
        start, end = X.indptr[row], X.indptr[row + 1]
        values = X.data[start:end]
        if values.size:
            edges = np.quantile(values, quantiles)
            bins[start:end] = 1 + np.searchsorted(edges, values, side="right")
    return sp.csr_matrix((bins, X.indices.copy(), X.indptr.copy()), shape=X.shape)


def expressed_first(expressed: np.ndarray, max_genes: int, rng: np.random.Generator):
    """Split one cell's genes into (context, rest), both in random order.

    ``context`` holds up to max_genes // 2 of the expressed genes; ``rest`` every other gene.
    A training sequence is context + the first max_genes - len(context) genes of rest."""
    order = rng.permutation(expressed.size)
    on = order[expressed[order]]
    context = on[: max_genes // 2]
    rest = order[~np.isin(order, context)]
    return context, rest


def training_genes(expressed: np.ndarray, max_genes: int, rng: np.random.Generator) -> np.ndarray:
    """Gene indices of one training sequence: every gene if they fit, else expressed-first."""
    context, rest = expressed_first(expressed, max_genes, rng)
    return np.concatenate([context, rest[: max_genes - context.size]])


def draw_pairs(condition: np.ndarray, groups: np.ndarray, rng: np.random.Generator):
    """Fine-tuning pairs for one epoch, shuffled: every control cell of a group that has
    perturbed cells is the input once, and its target is a random perturbed cell of its group.
    Returns (input rows, target rows)."""
    sources, targets = [], []
    for group in np.unique(groups):
        controls = np.flatnonzero((groups == group) & (condition == CONTROL))
        perturbed = np.flatnonzero((groups == group) & (condition == PERTURBED))
        if controls.size and perturbed.size:
            sources.append(controls)
            targets.append(rng.choice(perturbed, size=controls.size))
    if not sources:
        raise ValueError("transformer: no training group has both control and perturbed cells")
    order = rng.permutation(sum(part.size for part in sources))
    return np.concatenate(sources)[order], np.concatenate(targets)[order]


def pad_batch(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged gene-index sequences; returns (padded indices, padding mask: True = pad)."""
    length = max(seq.size for seq in sequences)
    genes = np.zeros((len(sequences), length), dtype=np.int64)
    pad = np.ones((len(sequences), length), dtype=bool)
    for i, seq in enumerate(sequences):
        genes[i, : seq.size] = seq
        pad[i, : seq.size] = False
    return genes, pad


# ----------------------------------------------------------------------------- network

class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_out = nn.Sequential(nn.Linear(d_model, d_model), nn.Dropout(dropout))
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (self.qkv(self.ln_attn(x))
                   .view(batch, length, 3, self.n_heads, width // self.n_heads)
                   .permute(2, 0, 3, 1, 4))  # each (batch, heads, length, head_dim)
        # No dropout on the attention weights: it would push CPUs off the fused kernel.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        x = x + self.attn_out(y.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.ln_mlp(x))


class CellTransformer(nn.Module):
    """Gene + value + condition embeddings → transformer encoder → expression per position."""

    def __init__(self, n_genes: int, n_bins: int, n_layers: int, d_model: int, n_heads: int,
                 dropout: float):
        super().__init__()
        self.mask_bin = n_bins  # value token of a masked position, one past the real bins
        self.gene_embedding = nn.Embedding(n_genes, d_model)
        self.value_embedding = nn.Embedding(n_bins + 1, d_model)
        self.condition_embedding = nn.Embedding(2, d_model)
        self.cls = nn.Parameter(torch.randn(d_model))
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(d_model)
        self.expression_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(),
                                             nn.Linear(d_model, 1))
        # Each gene's typical level, set to its training mean so the network learns deviations
        # from the start instead of spending early epochs on thousands of gene offsets.
        self.gene_level = nn.Parameter(torch.zeros(n_genes))

    def forward(self, genes: torch.Tensor, bins: torch.Tensor, condition: torch.Tensor,
                pad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """genes, bins: (batch, length) ints; condition: (batch,); pad: (batch, length), True = pad.

        Returns predicted expression (batch, length) and the ``<cls>`` state (batch, d_model)."""
        tokens = self.gene_embedding(genes) + self.value_embedding(bins)
        cls = self.cls.expand(genes.shape[0], 1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.condition_embedding(condition)[:, None, :]
        attend = None
        if pad is not None and pad.any():
            # No query may attend to a padded key; the <cls> key is never padded.
            keep = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1).logical_not()
            attend = keep[:, None, None, :]
        for block in self.blocks:
            x = block(x, attend)
        x = self.ln_final(x)
        expression = self.expression_head(x[:, 1:]).squeeze(-1) + self.gene_level[genes]
        return expression, x[:, 0]


# ----------------------------------------------------------------------------- model

@register("transformer")
class Transformer(Model):
    """scGPT-style transformer: masked-value pretraining, then control→perturbed fine-tuning."""

    defaults = {
        "n_layers": 4,
        "d_model": 64,
        "n_heads": 4,
        "dropout": 0.0,
        "n_bins": 51,          # scGPT's default: zero + 50 quantile bins
        "max_genes": 256,      # tokens per sequence; more genes are sampled per cell
        "mask_fraction": 0.4,  # share of value tokens masked in pretraining
        "pretrain_epochs": 2,
        "finetune_epochs": 4,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.01,
        "device": "auto",
    }

    # -- training -------------------------------------------------------------------------

    def _fit(self, train: ad.AnnData) -> None:
        p, k = self.params, self.keys
        self.device = resolve_device(p["device"])
        seed_everything(self.seed)
        reuse_freed_memory()
        rng = np.random.default_rng(self.seed)
        self.genes = list(train.var_names)
        self._build_network()

        X = sp.csr_matrix(train.X, dtype=np.float32)
        with torch.no_grad():
            self.net.gene_level.copy_(torch.from_numpy(np.asarray(X.mean(axis=0)).ravel()))
        bins = bin_expression(X, p["n_bins"])
        condition = np.where(train.obs[k.condition].to_numpy() == k.perturbed, PERTURBED, CONTROL)
        groups = train.obs[k.group].astype(str).to_numpy()

        optimizer = torch.optim.AdamW(self.net.parameters(), lr=p["lr"],
                                      weight_decay=p["weight_decay"])
        n_pairs = draw_pairs(condition, groups, rng)[0].size  # the same every epoch
        steps = (p["pretrain_epochs"] * math.ceil(X.shape[0] / p["batch_size"])
                 + p["finetune_epochs"] * math.ceil(n_pairs / p["batch_size"]))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=p["lr"],
                                                       total_steps=max(steps, 1), pct_start=0.1)
        records = []
        for epoch in range(p["pretrain_epochs"]):
            order = rng.permutation(X.shape[0])
            loss = self._epoch(optimizer, schedule, rng, X, bins, order, condition[order])
            records.append({"phase": "pretrain", "epoch": epoch, "loss": loss})
            log.info("transformer pretrain epoch %d: masked MSE %.4f", epoch, loss)
        for epoch in range(p["finetune_epochs"]):
            sources, targets = draw_pairs(condition, groups, rng)  # re-drawn every epoch
            loss = self._epoch(optimizer, schedule, rng, X, bins, sources,
                               np.full(sources.size, PERTURBED), targets)
            records.append({"phase": "finetune", "epoch": epoch, "loss": loss})
            log.info("transformer finetune epoch %d: pair MSE %.4f", epoch, loss)
        self.history = pd.DataFrame(records, columns=["phase", "epoch", "loss"])

    def _build_network(self) -> None:
        p = self.params
        self.net = CellTransformer(len(self.genes), p["n_bins"], p["n_layers"], p["d_model"],
                                   p["n_heads"], p["dropout"]).to(self.device)

    def _epoch(self, optimizer, schedule, rng, X, bins, cells, tokens, targets=None) -> float:
        """One pass over ``cells`` with condition tokens ``tokens``. targets=None: masked-value
        modelling of the cells themselves; else row targets[i] is the target of input cells[i]."""
        p = self.params
        self.net.train()
        total, count = 0.0, 0
        for start in range(0, cells.size, p["batch_size"]):
            batch = cells[start: start + p["batch_size"]]
            inputs = X[batch]
            genes = np.stack([training_genes(row > 0, p["max_genes"], rng)
                              for row in dense(inputs)])
            values_in = np.take_along_axis(dense(bins[batch]), genes, axis=1)
            source = inputs if targets is None else X[targets[start: start + p["batch_size"]]]
            values = np.take_along_axis(dense(source), genes, axis=1)
            if targets is None:
                scored = rng.random(genes.shape) < p["mask_fraction"]
                values_in[scored] = self.net.mask_bin
            else:
                scored = np.ones(genes.shape, dtype=bool)
            pred = self._forward(genes, values_in, tokens[start: start + p["batch_size"]])[0]
            scored_t = torch.from_numpy(scored).to(self.device)
            target_t = torch.from_numpy(values).to(self.device)
            loss = F.mse_loss(pred.float()[scored_t], target_t[scored_t])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += loss.item() * batch.size
            count += batch.size
        return total / max(count, 1)

    def _forward(self, genes, bins, condition, pad=None):
        to = lambda a: torch.as_tensor(a).to(self.device)  # noqa: E731
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                            enabled=self.device.type == "cuda"):
            return self.net(to(genes), to(bins), to(condition), None if pad is None else to(pad))

    # -- inference ------------------------------------------------------------------------

    def _check_genes(self, adata: ad.AnnData) -> None:
        if list(adata.var_names) != self.genes:
            raise ValueError("transformer: cells must have the training genes in the same order")

    @torch.no_grad()
    def predict(self, control_cells: ad.AnnData) -> ad.AnnData:
        """Every gene of every control cell under the perturbed token: the cell's expressed
        context stays in each sequence while the remaining genes are queried in chunks beside it."""
        self._check_genes(control_cells)
        X = dense(control_cells.X).astype(np.float32)
        p = self.params
        self.net.eval()
        rng = np.random.default_rng(self.seed)
        bins = dense(bin_expression(X, p["n_bins"]))
        pred_sum = np.zeros(X.shape, dtype=np.float64)
        pred_count = np.zeros(X.shape, dtype=np.int64)
        for first in range(0, X.shape[0], p["batch_size"]):
            sequences, owners = [], []
            for cell in range(first, min(first + p["batch_size"], X.shape[0])):
                context, rest = expressed_first(X[cell] > 0, p["max_genes"], rng)
                step = p["max_genes"] - context.size
                for start in range(0, max(rest.size, 1), step):
                    sequences.append(np.concatenate([context, rest[start: start + step]]))
                    owners.append(cell)
            owners = np.asarray(owners)
            for start in range(0, len(sequences), p["batch_size"]):
                cells = owners[start: start + p["batch_size"]]
                genes, pad = pad_batch(sequences[start: start + p["batch_size"]])
                pred = self._forward(genes, np.take_along_axis(bins[cells], genes, axis=1),
                                     np.full(cells.size, PERTURBED), pad)[0].float().cpu().numpy()
                rows, real = np.broadcast_to(cells[:, None], genes.shape), ~pad
                np.add.at(pred_sum, (rows[real], genes[real]), pred[real])
                np.add.at(pred_count, (rows[real], genes[real]), 1)
        # Context genes are predicted in every chunk: average them. Expression is non-negative.
        X_pred = np.maximum(pred_sum / pred_count, 0.0).astype(np.float32)
        return self._prediction(control_cells, X_pred)

    @torch.no_grad()
    def embed(self, adata: ad.AnnData) -> dict[str, np.ndarray]:
        """The ``<cls>`` state of each cell, with its own condition token, one training-style
        sequence per cell."""
        self._check_genes(adata)
        p, k = self.params, self.keys
        self.net.eval()
        rng = np.random.default_rng(self.seed)
        X = dense(adata.X).astype(np.float32)
        bins = dense(bin_expression(X, p["n_bins"]))
        condition = np.where(adata.obs[k.condition].to_numpy() == k.perturbed, PERTURBED, CONTROL)
        out = []
        for start in range(0, X.shape[0], p["batch_size"]):
            rows = np.arange(start, min(start + p["batch_size"], X.shape[0]))
            genes = np.stack([training_genes(X[r] > 0, p["max_genes"], rng) for r in rows])
            cls = self._forward(genes, np.take_along_axis(bins[rows], genes, axis=1),
                                condition[rows])[1]
            out.append(cls.float().cpu().numpy())
        return {"X_transformer": np.concatenate(out)}

    # -- checkpoint -----------------------------------------------------------------------

    def _save_state(self, directory: Path) -> None:
        torch.save(self.net.state_dict(), directory / "model.pt")
        (directory / "genes.json").write_text(json.dumps(self.genes))
        self.history.to_csv(directory / "losses.csv", index=False)

    def _load_state(self, directory: Path) -> None:
        self.device = resolve_device(self.params["device"])
        self.genes = json.loads((directory / "genes.json").read_text())
        self._build_network()
        self.net.load_state_dict(torch.load(directory / "model.pt", map_location=self.device))
        self.history = pd.read_csv(directory / "losses.csv")
