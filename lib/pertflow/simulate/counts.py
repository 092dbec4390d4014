"""The count model of both simulators: each cell's log-rates (a softmax gives its gene
proportions), mitochondrial genes raised in damaged cells, a log-normal library size, then
gamma-Poisson (negative-binomial) counts with variance mu + dispersion * mu^2."""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp

DAMAGED_MITO_SHIFT = 3.0  # log-rate added to the mitochondrial genes of a damaged cell
LIBRARY_SD = 0.35  # sd of the log library size
BLOCK_VALUES = 2**22  # cells × genes of one block of rates


def gamma_poisson_counts(rng: np.random.Generator, log_rates: Callable[[slice], np.ndarray],
                         n_cells: int, n_genes: int, mito: np.ndarray, damaged_fraction: float,
                         mean_library_size: float, dispersion: float,
                         library_scale: float | np.ndarray = 1.0) -> sp.csr_matrix:
    """Integer counts (float32 CSR, cells × genes). ``log_rates(rows)`` gives the log-rates of
    the cells ``rows`` (a slice), a fresh array this function may change; ``library_scale``
    multiplies each cell's library size (e.g. a batch's sequencing depth).

    Draws, in this order: which cells are damaged, the library sizes, every gamma rate, then
    every Poisson count. The rates are made in blocks of cells, so that memory stays near one
    dense float64 matrix at 100k cells; generator draws are elementwise in order, so the
    numbers are those of drawing the whole matrix at once."""
    damaged = rng.random(n_cells) < damaged_fraction
    library = rng.lognormal(np.log(mean_library_size), LIBRARY_SD, size=n_cells) * library_scale
    shape = 1.0 / dispersion
    step = max(1, BLOCK_VALUES // n_genes)
    blocks = [slice(start, min(start + step, n_cells)) for start in range(0, n_cells, step)]
    rates = np.empty((n_cells, n_genes))
    for rows in blocks:
        logits = log_rates(rows)
        logits[np.ix_(damaged[rows], mito)] += DAMAGED_MITO_SHIFT
        proportion = np.exp(logits - logits.max(axis=1, keepdims=True))
        proportion /= proportion.sum(axis=1, keepdims=True)
        rates[rows] = rng.gamma(shape, proportion * library[rows, None] / shape)
    return sp.vstack([sp.csr_matrix(rng.poisson(rates[rows]).astype(np.float32))
                      for rows in blocks], format="csr")
