"""Which perturbations and cells a measure of the screen takes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pertflow.errors import DataError


def perturbation_names(labels: np.ndarray, control: str, perturbations, fold=None) -> list[str]:
    """The perturbations to analyse (``perturbations``, or every label but the control), after
    checking that the control and each of them have 2 cells or more (in each fold of ``fold``)."""
    if not np.any(labels == control):
        raise DataError(f"no control cells labelled '{control}'; fix `control:`.")
    names = [x for x in pd.unique(labels) if x != control] if perturbations is None \
        else [str(x) for x in perturbations]
    if control in names:
        raise DataError(f"the control label '{control}' is among the perturbations; remove it.")
    fold = np.zeros(len(labels), int) if fold is None else np.asarray(fold)
    parts = np.unique(fold)
    few = [x for x in [control, *names]
           if min(np.sum((labels == x) & (fold == f)) for f in parts) < 2]
    if few:
        where = "" if len(parts) == 1 else f" in each of the {len(parts)} folds"
        raise DataError(f"perturbation(s) {few} have fewer than 2 cells{where}; drop them "
                        "(raise `min_cells:`).")
    return names


def at_most(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``rows``, or a seeded sorted draw of ``n`` of them."""
    return rows if len(rows) <= n else np.sort(rng.choice(rows, size=n, replace=False))
