"""A small scGPT-style transformer trained from scratch: cells as sequences of gene tokens, each
predicting its own change under the perturbation on top of the response of similar groups.

Cui et al. (Nature Methods 2024) represent a cell as a set of (gene, binned expression) tokens.
Pretrained weights are not available here, so this module builds the same kind of model at a size
that trains on one dataset, and uses it for scGen-style leave-one-cell-type-out prediction.

Prediction is residual, on the log-normalised scale of X: control cell x becomes (clipped at 0)

    x + r + change(x, r)

where r (genes) is the response transferred from the training groups that resemble the cell's
group — exactly what the baseline ``similarity_shift`` adds (``pertflow.models.transfer``: group shifts
weighted by the similarity of their control means, τ and α chosen by leave-one-group-out) — and
the network predicts a per-cell, per-gene correction. Each cell keeps its own expression, so the
predicted cells vary as the controls do; an untrained network (its change head starts at zero)
predicts what the baseline does.

Tokens. Position i of a cell's sequence carries
    gene_embedding[gene_i] + value_embedding[bin_i] + level_embedding(x_i) + response_embedding(r_i)
and a learned ``<cls>`` token comes first. Bins are per cell (scGPT's value binning): a zero stays
bin 0; non-zero values fall into bins 1..n_bins-1 at the cell's own quantiles, so sequencing depth
does not change them; the level is the value itself, which the change depends on. There is no
positional embedding: the gene identity is the position.

Sequences. A cell with more than ``max_genes`` genes is represented by a random subset: up to
half the slots hold genes the cell expresses, the context (they say what the cell is; most genes
of a droplet cell are zero), and the rest is a uniform draw of its remaining genes, the queries
(mostly zeros, which is where a perturbation switches genes on). Attention follows scGPT's
generative mask: the context and ``<cls>`` attend among themselves, each query to them and to
itself only. Queries never see each other, so prediction encodes a cell's context once and
answers every remaining gene beside its cached keys and values (in chunks only to bound memory),
each gene once; with full attention every chunk of queries needed the context recomputed beside
it.

Training. A control cell of a training group g, given the response transferred to g from the
*other* groups (as a held-out group gets it from all of them, so the network never learns to copy
g's own shift), predicts its perturbed state (MSE). The target is per gene: the cell's value
carried onto g's perturbed cells by 1-D optimal transport (``transport_targets``), a monotone map
of the cell's own value, so it can be learnt from the cell. (A random perturbed cell of g, the
target before, is best predicted in MSE by g's perturbed mean whatever the input cell: the
predictions collapsed to nearly one profile per group.) g's controls' targets have g's perturbed
means. In a dataset of several perturbations, every perturbation label of the training cells adds
such samples (its groups' controls, the response transferred under that label, targets on that
label's cells): the transferred response is the condition, so other perturbations' cells teach the
network how cells follow a response; the split's own label's transfer is what predicts.
scGPT's masked-value pretraining was dropped: on Kang et al. 2018 it changed no score and made
training slower.
"""

from __future__ import annotations

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
from scipy.stats import rankdata

from pertflow.models import transfer
from pertflow.models.base import register
from pertflow.models.torch_base import TorchModel
from pertflow.utils import dense

log = logging.getLogger(__name__)
# Queries answered beside one batch of contexts at a time: bounds the attention weights' memory
# (batch × heads × QUERY_CHUNK × context floats).
QUERY_CHUNK = 512

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


def pad_batch(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged gene-index sequences; returns (padded indices, padding mask: True = pad)."""
    length = max(seq.size for seq in sequences)
    genes = np.zeros((len(sequences), length), dtype=np.int64)
    pad = np.ones((len(sequences), length), dtype=bool)
    for i, seq in enumerate(sequences):
        genes[i, : seq.size] = seq
        pad[i, : seq.size] = False
    return genes, pad


# ----------------------------------------------------------------------------- responses

def transport_targets(controls: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """Per gene, each control cell's value carried onto the perturbed cells by 1-D optimal
    transport with uniform masses: the mean of the perturbed values in the quantile slice that
    the cell's rank occupies (tied cells share their block's slice, so all zeros get one value).

    controls: (n_c, genes), perturbed: (n_p, genes) → (n_c, genes). The targets' mean over cells
    is the perturbed mean, and they are monotone in the control value."""
    n_c, n_p = len(controls), len(perturbed)
    below = rankdata(controls, axis=0, method="min") - 1     # (n_c, genes) cells below the block
    through = rankdata(controls, axis=0, method="max")       # (n_c, genes) ... through its end
    ordered = np.sort(perturbed.astype(np.float64), axis=0)  # (n_p, genes)
    cumulative = np.vstack([np.zeros((1, ordered.shape[1])), np.cumsum(ordered, axis=0)])

    def mass_up_to(rank):  # sum of the ordered perturbed values up to quantile rank / n_c
        position = rank / n_c * n_p
        whole = np.minimum(np.floor(position).astype(np.int64), n_p - 1)
        return (np.take_along_axis(cumulative, whole, axis=0)
                + (position - whole) * np.take_along_axis(ordered, whole, axis=0))

    return ((mass_up_to(through) - mass_up_to(below))
            / ((through - below) / n_c * n_p)).astype(np.float32)


def left_out_transfers(choice: transfer.Choice, responses: transfer.Responses) -> np.ndarray:
    """(groups, genes): the response each paired group gets from the *other* groups, weighted by
    the similarity of their control means to its own — as a held-out group gets it from all."""
    out = np.zeros_like(responses.shifts)
    for i in range(len(responses.names)):
        others = [j for j in range(len(responses.names)) if j != i]
        if others:  # with one paired group there is nothing to transfer from
            rest = transfer.Responses([responses.names[j] for j in others],
                                      responses.control_means[others],
                                      responses.shifts[others], [], [])
            out[i] = transfer.transferred(choice, rest, responses.control_means[i][None])[0][0]
    return out


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

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(self.ln_attn(x)).view(batch, length, 3, self.n_heads, -1)
        return qkv.permute(2, 0, 3, 1, 4)  # (3, batch, heads, length, head_dim)

    def _update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_out(y.transpose(1, 2).reshape(x.shape))
        return x + self.mlp(self.ln_mlp(x))

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: the context (batch, context, width), attending among itself (``attend``: keys
        kept, (batch, 1, 1, context)) → its new states, and its keys and values for ``answer``."""
        q, k, v = self._qkv(x)
        # No dropout on the attention weights: it would push CPUs off the fused kernel.
        return self._update(x, F.scaled_dot_product_attention(q, k, v, attn_mask=attend)), (k, v)

    def answer(self, queries: torch.Tensor, keys_values: tuple[torch.Tensor, torch.Tensor],
               attend: torch.Tensor | None) -> torch.Tensor:
        """queries: (batch, n, width), each attending to the context's keys and values and to
        itself only (scGPT's generative attention mask): queries never see each other, so any
        number of them can be answered beside one context, in any chunks."""
        k, v = keys_values
        qq, kq, vq = self._qkv(queries)
        scale = qq.shape[-1] ** -0.5
        logits = qq @ k.transpose(-1, -2) * scale                   # (batch, heads, n, context)
        if attend is not None:
            logits = logits.masked_fill(~attend, float("-inf"))
        own = (qq * kq).sum(-1, keepdim=True) * scale               # (batch, heads, n, 1)
        weights = torch.softmax(torch.cat([logits, own], dim=-1), dim=-1)
        return self._update(queries, weights[..., :-1] @ v + weights[..., -1:] * vq)


class CellTransformer(nn.Module):
    """Gene + bin + level + response embeddings → transformer encoder → each gene's change."""

    def __init__(self, n_genes: int, n_bins: int, n_layers: int, d_model: int, n_heads: int,
                 dropout: float):
        super().__init__()
        self.gene_embedding = nn.Embedding(n_genes, d_model)
        self.value_embedding = nn.Embedding(n_bins, d_model)     # the value's bin in the cell
        self.level_embedding = nn.Linear(1, d_model)             # the value itself (log scale)
        self.response_embedding = nn.Linear(1, d_model)          # the gene's transferred response
        self.cls = nn.Parameter(torch.randn(d_model))
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(d_model)
        self.change_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(),
                                         nn.Linear(d_model, 1))
        # The change starts at zero: an untrained network predicts control + transferred response.
        nn.init.zeros_(self.change_head[-1].weight)
        nn.init.zeros_(self.change_head[-1].bias)

    def embed_tokens(self, genes: torch.Tensor, bins: torch.Tensor, values: torch.Tensor,
                     response: torch.Tensor) -> torch.Tensor:
        """genes, bins: (batch, length) ints; values, response: (batch, length) floats, the
        cell's expression and the transferred response at ``genes`` → (batch, length, d_model)."""
        return (self.gene_embedding(genes) + self.value_embedding(bins)
                + self.level_embedding(values[..., None])
                + self.response_embedding(response[..., None]))

    def encode(self, context: tuple, pad: torch.Tensor | None = None):
        """context: (genes, bins, values, response) for ``embed_tokens``; pad: (batch, context),
        True = pad. The context's tokens and ``<cls>`` attend among themselves.

        Returns the predicted change beyond the response at the context's genes (batch,
        context), the ``<cls>`` state (batch, d_model), and what ``answer`` needs (each block's
        keys and values, the attention mask)."""
        tokens = self.embed_tokens(*context)
        x = torch.cat([self.cls.expand(tokens.shape[0], 1, -1), tokens], dim=1)
        attend = None
        if pad is not None and pad.any():
            # No token may attend to a padded key; the <cls> key is never padded.
            keep = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1).logical_not()
            attend = keep[:, None, None, :]
        keys_values = []
        for block in self.blocks:
            x, kv = block(x, attend)
            keys_values.append(kv)
        x = self.ln_final(x)
        return self.change_head(x[:, 1:]).squeeze(-1), x[:, 0], (keys_values, attend)

    def answer(self, queries: tuple, encoded) -> torch.Tensor:
        """queries: (genes, bins, values, response) (batch, n), each attending to its cell's
        encoded context and to itself → the predicted change at the queries' genes (batch, n);
        padded queries are computed and ignored."""
        keys_values, attend = encoded
        q = self.embed_tokens(*queries)
        for block, kv in zip(self.blocks, keys_values):
            q = block.answer(q, kv, attend)
        return self.change_head(self.ln_final(q)).squeeze(-1)


# ----------------------------------------------------------------------------- model

@register("transformer")
class Transformer(TorchModel):
    """scGPT-style transformer predicting each control cell's change on top of the response
    transferred from the training groups that resemble its group."""

    defaults = {
        "n_layers": 4,
        "d_model": 64,
        "n_heads": 4,
        "dropout": 0.0,
        "n_bins": 51,          # scGPT's default: zero + 50 quantile bins
        "max_genes": 256,      # tokens per sequence; more genes are sampled per cell
        "epochs": 4,           # passes over the paired training groups' control cells
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.01,
        "score_genes": 100,    # each training group's most changed genes the transfer is chosen on
        "device": "auto",
    }

    param_help = {
        "n_layers": "transformer blocks",
        "d_model": "token embedding width (a multiple of n_heads)",
        "n_heads": "attention heads per block",
        "dropout": "dropout in attention and feed-forward layers",
        "n_bins": "expression bins per cell (bin 0: zero; the rest at the cell's quantiles)",
        "max_genes": "gene tokens per sequence; a cell with more genes is subsampled",
        "epochs": "passes over the paired training groups' control cells",
        "batch_size": "cells per training minibatch",
        "lr": "AdamW learning rate",
        "weight_decay": "AdamW weight decay",
        "score_genes": "each training group's most changed genes the response transfer is "
                       "chosen on",
        "device": "where to train: auto (a GPU when the job sees one), cpu, cuda or cuda:n",
    }

    @classmethod
    def _check_param_rules(cls, params: dict, where: str) -> None:
        super()._check_param_rules(params, where)
        if params["d_model"] % params["n_heads"]:  # each head gets d_model / n_heads dimensions
            raise cls.param_error(where, "d_model", params["d_model"],
                                  f"a multiple of n_heads ({params['n_heads']})")

    # -- training -------------------------------------------------------------------------

    def _fit(self, train: ad.AnnData) -> None:
        p, k = self.params, self.keys
        self._start_training(train)
        rng = np.random.default_rng(self.seed)
        X = dense(train.X).astype(np.float32)                          # (cells, genes)
        condition = train.obs[k.condition].to_numpy()
        groups = train.obs[k.group].astype(str).to_numpy()

        # Per perturbation label of the training cells (the split's first: its choice predicts),
        # the transfer chosen on the training groups as the baseline similarity_shift does.
        labels = [k.perturbed] + sorted(set(map(str, condition)) - {k.control, k.perturbed})
        cells, response_rows, targets, responses, trained = [], [], [], [], []
        for label in labels:
            if label != k.perturbed and len(transfer.paired_groups(condition, groups, k.control,
                                                                    label)) < 2:
                log.info("transformer: '%s' is paired with controls in fewer than two groups; "
                         "its cells do not train", label)
                continue
            r = transfer.group_responses(X, condition, groups, k.control, label,
                                         np.random.default_rng(self.seed))
            scored = transfer.changed_genes(X, condition, groups, r.names, k.control, label,
                                            p["score_genes"])
            choice = transfer.choose("similarity", r, scored, lambda Z, g: Z.mean(0)[g],
                                     linear=True)
            paired = transfer.Responses(r.names, r.control_means, r.shifts, [], [])
            if label == k.perturbed:
                self.choice, self.responses = choice, paired
                self.transfer = choice.record("genes")
            # Training samples: each paired group's control cells, the response the other
            # groups transfer to that group under the label (the network's condition: another
            # perturbation's cells teach it how cells respond to a given response), and the
            # cells' transport targets on the group's cells under the label.
            offset = sum(map(len, responses))
            responses.append(left_out_transfers(choice, paired).astype(np.float32))
            for i, name in enumerate(r.names):
                controls = np.flatnonzero((groups == name) & (condition == k.control))
                perturbed = np.flatnonzero((groups == name) & (condition == label))
                cells.append(controls)
                response_rows.append(np.full(controls.size, offset + i))
                targets.append(transport_targets(X[controls], X[perturbed]))
            trained.append(label)
        cells, response_rows = np.concatenate(cells), np.concatenate(response_rows)  # (samples,)
        targets = np.concatenate(targets)                                  # (samples, genes)
        responses = np.concatenate(responses)               # (paired groups × labels, genes)
        log.info("transformer: %d training samples (control cells) under %s", cells.size,
                 ", ".join(trained))
        bins = bin_expression(X, p["n_bins"])                  # sparse, like the cells' zeros

        self._build_network()
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=p["lr"],
                                      weight_decay=p["weight_decay"])
        steps = p["epochs"] * math.ceil(cells.size / p["batch_size"])
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=p["lr"],
                                                       total_steps=max(steps, 1), pct_start=0.1)
        losses = []
        for epoch in range(p["epochs"]):
            self.net.train()
            order = rng.permutation(cells.size)
            total = 0.0
            for start in range(0, order.size, p["batch_size"]):
                batch = order[start: start + p["batch_size"]]                  # samples
                x = X[cells[batch]]                                            # (B, genes)
                # Up to half the slots for expressed genes (context), the rest queried.
                context, queries = [], []
                for row in x:
                    expressed, rest = expressed_first(row > 0, p["max_genes"], rng)
                    context.append(expressed)
                    queries.append(rest[: p["max_genes"] - expressed.size])
                b, r = dense(bins[cells[batch]]), responses[response_rows[batch]]
                at_context, _, encoded = self._encode(x, b, r, context)
                parts = [at_context, self._answer(x, b, r, queries, encoded)]
                pred, target = [], []
                for genes, pad, values in parts:
                    real = torch.as_tensor(~pad, device=self.device)
                    pred.append(values[real])
                    target.append(torch.as_tensor(np.take_along_axis(targets[batch], genes, 1),
                                                  device=self.device)[real])
                loss = F.mse_loss(torch.cat(pred), torch.cat(target))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                total += loss.item() * batch.size
            losses.append(total / cells.size)
            log.info("transformer epoch %d: transport-target MSE %.4f", epoch, losses[-1])
        self.history = pd.DataFrame({"epoch": range(p["epochs"]), "loss": losses})

    def _build_network(self) -> None:
        p = self.params
        self.net = CellTransformer(len(self.genes), p["n_bins"], p["n_layers"], p["d_model"],
                                   p["n_heads"], p["dropout"]).to(self.device)

    def _tokens(self, sequences: list[np.ndarray], X, bins, response):
        """Per cell (rows of the numpy X, bins, response: cells × genes), its gene indices →
        padded (genes, pad) numpy arrays and the (genes, bins, values, response) tensors."""
        genes, pad = pad_batch(sequences)
        at = lambda a: np.take_along_axis(a, genes, axis=1)  # noqa: E731  (batch, length)
        return genes, pad, tuple(torch.as_tensor(a).to(self.device)
                                 for a in (genes, at(bins), at(X), at(response)))

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                              enabled=self.device.type == "cuda")

    def _encode(self, X, bins, response, context):
        """A batch of cells (rows of X, bins, response) with, per cell, its context's gene
        indices → (genes, pad, predicted perturbed values = values + response + change) at the
        context (numpy indices, float32 tensor), the ``<cls>`` states, and the encoded context
        for ``_answer``."""
        genes, pad, tokens = self._tokens(context, X, bins, response)
        with self._autocast():
            change, cls, encoded = self.net.encode(tokens, torch.as_tensor(pad).to(self.device))
        return (genes, pad, tokens[2] + tokens[3] + change.float()), cls.float(), encoded

    def _answer(self, X, bins, response, queries, encoded):
        """Per cell of the encoded batch, its queries' gene indices → (genes, pad, predicted
        perturbed values) at the queries."""
        genes, pad, tokens = self._tokens(queries, X, bins, response)
        with self._autocast():
            change = self.net.answer(tokens, encoded)
        return genes, pad, tokens[2] + tokens[3] + change.float()

    # -- inference ------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, control_cells: ad.AnnData) -> ad.AnnData:
        """Every gene of every control cell, given the response that every paired training group
        transfers to these cells: the cell's expressed context stays in each sequence while the
        remaining genes are queried in chunks beside it."""
        self._check_genes(control_cells)
        X = dense(control_cells.X).astype(np.float32)
        p = self.params
        self.net.eval()
        rng = np.random.default_rng(self.seed)
        delta, weights = transfer.transferred(self.choice, self.responses, X)
        self.transfer = self.choice.record("genes", weights)
        response = delta[0].astype(np.float32)                                   # (genes,)
        bins = dense(bin_expression(X, p["n_bins"]))
        X_pred = np.zeros_like(X)
        for first in range(0, X.shape[0], p["batch_size"]):
            rows = np.arange(first, min(first + p["batch_size"], X.shape[0]))
            context, rest = zip(*(expressed_first(X[r] > 0, p["max_genes"], rng) for r in rows))
            responses = np.broadcast_to(response, (rows.size, X.shape[1]))
            at_context, _, encoded = self._encode(X[rows], bins[rows], responses, context)
            parts = [at_context]
            # The queries never see each other: every other gene is answered once, beside the
            # one encoded context, in chunks that bound memory.
            for start in range(0, max(r.size for r in rest), QUERY_CHUNK):
                chunk = [r[start: start + QUERY_CHUNK] for r in rest]
                parts.append(self._answer(X[rows], bins[rows], responses, chunk, encoded))
            for genes, pad, values in parts:
                real = ~pad
                X_pred[np.broadcast_to(rows[:, None], genes.shape)[real], genes[real]] = \
                    values.cpu().numpy()[real]
        X_pred = np.maximum(X_pred, 0.0)  # expression is non-negative
        return self._prediction(control_cells, X_pred)

    @torch.no_grad()
    def embed(self, adata: ad.AnnData) -> dict[str, np.ndarray]:
        """The ``<cls>`` state of each cell, given no response, one training-style sequence per
        cell."""
        self._check_genes(adata)
        p = self.params
        self.net.eval()
        rng = np.random.default_rng(self.seed)
        X = dense(adata.X).astype(np.float32)
        bins = dense(bin_expression(X, p["n_bins"]))
        out = []
        for start in range(0, X.shape[0], p["batch_size"]):
            rows = np.arange(start, min(start + p["batch_size"], X.shape[0]))
            context = [expressed_first(X[r] > 0, p["max_genes"], rng)[0] for r in rows]
            cls = self._encode(X[rows], bins[rows], np.zeros_like(X[rows]), context)[1]
            out.append(cls.cpu().numpy())
        return {"X_transformer": np.concatenate(out)}

    # -- checkpoint -----------------------------------------------------------------------

    def _save_state(self, directory: Path) -> None:
        super()._save_state(directory)
        torch.save(self.net.state_dict(), directory / "model.pt")
        np.savez(directory / "responses.npz", **self.responses.to_arrays())
        self.choice.scores.to_csv(directory / "transfer_scores.csv")

    def _load_state(self, directory: Path) -> None:
        super()._load_state(directory)
        self._build_network()
        self.net.load_state_dict(self._load_tensors(directory / "model.pt"))
        with np.load(directory / "responses.npz") as arrays:
            self.responses = transfer.Responses.from_arrays(arrays)
        self.choice = transfer.Choice.from_record(self.transfer)  # base.load restored the record
