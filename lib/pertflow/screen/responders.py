"""Per cell, whether it responds to its perturbation: a projection on the perturbation's direction
and a two-component Gaussian mixture with the controls' component fixed."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from pertflow.screen.selection import perturbation_names

RESPONDER_THRESHOLD = 0.5


def call_responders(latent: np.ndarray, labels, control: str,
                    perturbations: Iterable[str] | None = None,
                    significant: Iterable[str] | None = None,
                    threshold: float = RESPONDER_THRESHOLD, folds=None) -> pd.DataFrame:
    """Per cell, whether it responds to its perturbation in ``latent``; a knockout cell that
    does not is an escaper. Mixscape's classifier, in any space: the perturbation's cells are
    projected on the direction from the controls' mean to theirs, and a two-component Gaussian
    mixture with the controls' component fixed (their projections' mean and sd) gives each
    cell's posterior of the other component. A mixture along one direction rather than a kNN
    posterior: it needs no neighbourhood size, and escapers, however many, sit at the controls'
    component by construction. Three departures from Mixscape (``pertflow.screen.mixscape``),
    each because it biases the calls: the free component and its weight are fitted on the
    perturbation's cells alone (Mixscape fits them with the controls pooled in, which makes
    every cell's prior of responding its share of the pooled cells, e.g. 0.15, so true
    responders near the middle are called escapers); the direction is estimated once from all
    its cells (escapers sit at the controls' mean, so the direction is the responders' already;
    Mixscape's re-estimate from the cells called responders feeds the selection back and, with
    the pooled prior, shrinks the calls round after round); and each cell is projected on the
    direction of the other cells (leave-one-out), which keeps escapers' projections centred on
    the controls'. With ``significant`` (e.g. the perturbations of q < 0.05 in
    ``effects.effect_sizes``), the cells of other perturbations are all escapers, as Mixscape
    calls every cell of a knockout without DE genes non-perturbed. With ``folds`` (cross-fitted
    latents, see ``effect_sizes``), each fold's cells are called against its own controls.

    Returns a frame in the cells' order: ``responder`` (bool; False for controls),
    ``probability`` of responding and ``projection`` (both NaN for controls and cells of
    perturbations not analysed)."""
    latent = np.asarray(latent, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    fold = np.zeros(len(labels), int) if folds is None else np.asarray(folds)
    names = perturbation_names(labels, control, perturbations, fold)
    keep = None if significant is None else set(map(str, significant))
    out = pd.DataFrame({"responder": np.zeros(len(labels), bool),
                        "probability": np.full(len(labels), np.nan),
                        "projection": np.full(len(labels), np.nan)})
    for name in names:
        if keep is not None and name not in keep:
            out.loc[labels == name, "probability"] = 0.0
            continue
        for f in np.unique(fold):
            rows = np.flatnonzero((labels == name) & (fold == f))
            probability, projection = _responder_probability(
                latent[rows], latent[(labels == control) & (fold == f)])
            out.loc[rows, "probability"] = probability
            out.loc[rows, "projection"] = projection
            out.loc[rows, "responder"] = probability > threshold
    return out


def _responder_probability(cells: np.ndarray,
                           controls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One perturbation's cells (rows) against the controls' (rows): each cell's posterior of
    responding and its projection. Each cell is projected on the direction of the other cells
    (leave-one-out): on the direction of all cells, its own noise, which that direction
    contains, moves an escaper towards the responders (by about dims / n_cells / |shift|²,
    a fifth of the way with 24 dims, 70 cells and a 2-sd shift)."""
    control_mean, n = controls.mean(axis=0), len(cells)
    total = cells.sum(axis=0)
    direction = total / n - control_mean
    if n < 2 or direction @ direction == 0:
        return np.zeros(n), np.zeros(n)
    others = (total[None, :] - cells) / (n - 1) - control_mean
    projection = np.einsum("ij,ij->i", cells - control_mean, others) \
        / np.einsum("ij,ij->i", others, others)
    control_projection = (controls - control_mean) @ direction / (direction @ direction)
    return fixed_component_mixture(projection, control_projection, pooled=False), projection


def fixed_component_mixture(x: np.ndarray, x0: np.ndarray, pooled: bool,
                             n_iter: int = 200) -> np.ndarray:
    """EM for weight·N(μ, σ) + (1 − weight)·N(mean(x0), sd(x0)), the controls' component
    fixed and the free one started at the perturbed cells' mean and sd; returns each perturbed
    cell's posterior of the free component. ``pooled``: fitted on the perturbed (``x``) and
    control (``x0``) projections together, as pertpy's MixscapeGaussianMixture, so the weight,
    and with it every perturbed cell's prior of responding, is diluted by the controls;
    otherwise on the perturbed cells alone, whose share of responders the weight then is. A
    free component that ends below the controls' is no response: all posteriors 0."""
    n, mean0, sd0 = len(x), float(x0.mean()), max(float(x0.std()), 1e-8)
    weight, mean, sd = 0.5, float(x.mean()), max(float(x.std()), 1e-3 * sd0)
    if pooled:
        weight, x = n / (n + len(x0)), np.concatenate([x, x0])
    log0 = stats.norm.logpdf(x, mean0, sd0)
    for _ in range(n_iter):
        a = np.log(weight) + stats.norm.logpdf(x, mean, sd)
        posterior = np.exp(a - np.logaddexp(a, np.log1p(-weight) + log0))
        total = posterior.sum()
        if total < 1e-8:
            return np.zeros(n)
        new_weight, new_mean = total / len(x), posterior @ x / total
        sd = max(float(np.sqrt(posterior @ (x - new_mean) ** 2 / total)), 1e-3 * sd0)
        converged = (abs(new_weight - weight) < 1e-7
                     and abs(new_mean - mean) < 1e-7 * (1 + abs(mean)))
        weight, mean = min(max(new_weight, 1e-9), 1 - 1e-9), new_mean
        if converged:
            break
    return posterior[:n] if mean > mean0 else np.zeros(n)
