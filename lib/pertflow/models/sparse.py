"""The torch models' sparse input layer: minibatches of cells as CSR rows on the device, and
x @ weight read from them, so its cost follows the non-zeros (a few percent of a droplet matrix)
rather than cells × genes. Forward, each cell sums the weight rows of its expressed genes scaled
by expression (``F.embedding_bag``).

Backward, in one of two summation orders. Torch's own embedding_bag backward, or, when the rows
carry their column-major order (``by_gene=True``), one more embedding_bag in which each gene sums
the output gradients of the cells that express it. The two add the same products in another
order, so their gradients differ in float rounding (~1e-6): each model keeps the order it was
tuned and tested with (scGen torch's, faster for its 800-wide layer; contrastiveVI by gene).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn


def as_csr(X) -> sp.csr_matrix:
    """Dense or sparse X as float32 CSR (no copy when it already is one)."""
    return sp.csr_matrix(X, dtype=np.float32)


class SparseRows:
    """``X[rows]`` of a float32 CSR ``X`` on ``device``: ``indptr`` (cells + 1), and per non-zero
    its gene ``indices``, cell ``rows`` and ``values``; with ``by_gene`` also the non-zeros in
    column-major order (``by_gene``, their cells ``rows_by_gene``, ``gene_indptr``: genes + 1),
    built on the host, which is faster than on the device for a minibatch."""

    def __init__(self, X: sp.csr_matrix, rows: np.ndarray, device: torch.device,
                 by_gene: bool = False):
        part = X[rows]
        arrays = [part.indptr, part.indices, np.repeat(np.arange(len(rows)), np.diff(part.indptr)),
                  part.data]
        if by_gene:  # CSC of the non-zeros' positions: rows sorted within each gene
            columns = sp.csr_matrix((np.arange(part.nnz, dtype=np.int64), part.indices,
                                     part.indptr), shape=part.shape).tocsc()
            arrays += [columns.data, columns.indices, columns.indptr]
        tensors = [torch.from_numpy(np.asarray(a, dtype=np.int64 if a.dtype.kind in "iu"
                                               else np.float32)) for a in arrays]
        if device.type == "cuda":  # page-locked host memory: the copy overlaps compute
            tensors = [t.pin_memory().to(device, non_blocking=True) for t in tensors]
        self.indptr, self.indices, self.rows, self.values = tensors[:4]
        self.by_gene, self.rows_by_gene, self.gene_indptr = tensors[4:] or (None, None, None)
        self.shape = part.shape

    def with_values(self, values: torch.Tensor) -> "SparseRows":
        """The same non-zeros holding ``values`` (one each, in CSR order)."""
        out = copy.copy(self)
        out.values = values
        return out

    def dense(self) -> torch.Tensor:
        """The same rows as a dense (cells × genes) tensor."""
        out = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        return out.index_put_((self.rows, self.indices), self.values)


def _bag_sum(indices, weight, offsets, scales) -> torch.Tensor:
    return F.embedding_bag(indices, weight, offsets, mode="sum", per_sample_weights=scales,
                           include_last_offset=True)


class _ByGeneBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, x: SparseRows) -> torch.Tensor:
        ctx.x = x
        return _bag_sum(x.indices, weight.contiguous(), x.indptr, x.values)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x = ctx.x
        return _bag_sum(x.rows_by_gene, grad, x.gene_indptr, x.values[x.by_gene]), None


def sparse_matmul(x: SparseRows, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight: (cells × genes, read sparse) @ (genes × out) → cells × out; the backward by
    gene when ``x`` carries its column order."""
    if x.by_gene is None:
        return _bag_sum(x.indices, weight, x.indptr, x.values)
    return _ByGeneBackward.apply(weight, x)


class SparseInputLinear(nn.Module):
    """``nn.Linear(n_in, n_out)`` on ``SparseRows``, its weight stored gene-major (n_in × n_out),
    the layout ``sparse_matmul`` reads."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        bound = 1 / math.sqrt(n_in)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound))

    def forward(self, x: SparseRows) -> torch.Tensor:
        return sparse_matmul(x, self.weight) + self.bias
