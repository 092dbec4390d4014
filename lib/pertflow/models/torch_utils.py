"""Device choice, seeding and memory reuse shared by the torch models."""

from __future__ import annotations

import ctypes
import ctypes.util
import random
import sys

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; asking for ``cuda`` without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available; "
                           "set `device: auto` or `device: cpu` in the model's params.")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for data-order sampling.

    It also makes one small call to torch.exp. On CPU torch computes exp, log, sqrt, ... of
    large float tensors with MKL's vector-math library, in chunks on several threads, and that
    library picks its code path on its first call in a process. When two threads make that first
    call together, one of them now and then computes its chunk with a low-accuracy path, and a
    training run that starts from it ends far from its seed's other runs. A call below torch's
    parallel grain runs on one thread and settles the choice first.
    """
    torch.exp(torch.zeros(8))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def reuse_freed_memory() -> None:
    """Keep freed blocks in this process's heap instead of handing them back to the OS (glibc).

    Every training step frees and reallocates the same multi-megabyte gradient buffers. glibc
    serves blocks that size with mmap and trims freed heap tops, so each step faults fresh,
    kernel-zeroed pages in again, a large share of a small model's training time. With both
    thresholds raised, freed blocks are reused; memory still peaks where it would anyway, it is
    just not returned before the process ends. A no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (e.g. musl without mallopt)
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 1 << 30)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)
