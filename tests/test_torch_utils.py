"""Shared torch helpers and the torch models' base: device choice, the allocator settings training
relies on for speed, the sparse input layer, and the check of the genes of cells given to a
trained model."""

import resource
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pertflow.errors import DataError
from pertflow.models import get_model_class
from pertflow.models.sparse import SparseRows, sparse_matmul
from pertflow.models.torch_utils import resolve_device, reuse_freed_memory


def page_faults_of_repeated_buffers(n: int = 10, size: int = 6_000_000) -> int:
    """Minor page faults while a 24 MB buffer (the size of scGen's larger gradients) is
    allocated, written and freed ``n`` times, as a training step does."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.ones(size)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    reuse_freed_memory()
    page_faults_of_repeated_buffers(20)  # the heap settles within ~10 rounds
    pages_per_buffer = 6_000_000 * 4 // resource.getpagesize()
    # without the settings every buffer faults in anew: ~10 × pages_per_buffer
    assert page_faults_of_repeated_buffers() < 2 * pages_per_buffer


def test_cuda_without_a_gpu_names_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="device: cpu"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["scgen", "contrastivevi", "transformer"])
def test_cells_with_other_genes_are_refused_alike_by_every_torch_model(name, small_sim, keys):
    """The check runs before the network is touched, so an untrained model shows it."""
    model = get_model_class(name)(keys)
    model.genes = list(small_sim.var_names)
    missing = small_sim[:, 2:]
    with pytest.raises(DataError, match=rf"^model '{name}' was trained on 300 genes; these cells "
                                        r"have 298 genes, 2 of them missing \(first: \['"
                                        r".*Subset the cells to the training genes"):
        model.predict(missing)
    with pytest.raises(DataError, match=r"have 300 genes, others besides them, or another order"):
        model.embed(small_sim[:, ::-1])


@pytest.mark.parametrize("by_gene", [False, True])
def test_sparse_matmul_is_the_dense_product_forward_and_backward(by_gene):
    """Either backward order gives the dense product's gradient, whatever the weight's layout,
    and ``dense`` gives back the rows."""
    X = sp.random(30, 50, density=0.2, format="csr", random_state=0, dtype=np.float32)
    rows = np.array([3, 0, 17, 17, 29])  # any order, repeats allowed
    x = SparseRows(X, rows, torch.device("cpu"), by_gene=by_gene)
    np.testing.assert_array_equal(x.dense().numpy(), X[rows].toarray())
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 50, generator=generator, requires_grad=True)  # nn.Linear's layout
    grad = torch.randn(len(rows), 8, generator=generator)
    sparse = torch.autograd.grad(sparse_matmul(x, weight.t()), weight, grad)[0]
    dense = torch.autograd.grad(x.dense() @ weight.t(), weight, grad)[0]
    torch.testing.assert_close(sparse_matmul(x, weight.t()), x.dense() @ weight.t())
    torch.testing.assert_close(sparse, dense)
