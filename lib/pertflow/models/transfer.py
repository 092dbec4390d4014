"""Transferring the responses of the training groups that resemble a held-out group.

A held-out cell type responds most like the training types that resemble it (CD4T like CD8T and
NK, CD14+ monocytes like FCGR3A+ monocytes), so averaging every training group's response blurs
them. Two ways to transfer, in any space that decodes back to genes (the genes themselves, a PCA,
a model's latent space):

- ``similarity``: each training group g with cells in both conditions has its own shift
  delta_g = mean perturbed − mean control. A held-out group gets Σ_g w_g delta_g with
  w_g ∝ exp(sim_g / τ), where sim_g is the cosine similarity between g's control mean and the
  held-out controls' mean, both centred on the mean of the groups' control means (uncentred, the
  profile every group shares makes every group look alike). Cosine rather than Pearson: a
  dimension that is the same in every group (a latent part the response alone uses) adds
  nothing. τ = 0 keeps the most similar group only; τ = None is the plain average.
- ``per_cell`` (scPRAM, Jiang et al., Bioinformatics 2024): within each training group, exact
  optimal transport (squared Euclidean cost) pairs control with perturbed cells; a control cell's
  delta is its transport barycentre minus itself. Each held-out control cell takes the mean delta
  of its k most similar training control cells (cosine), weighted by that similarity. (The
  released scPRAM code finds the neighbours of the first held-out cell only and gives all cells
  its delta; this is the per-cell method the paper describes.)

Both scale the transferred response by α ∈ [0, 1], because responses need not carry over between
groups (patients rather than cell types, say), where leaving the controls unchanged is best.
τ or k, and α, are chosen on the training groups alone (``choose``): each training group in turn
is predicted from its own controls using the other groups and scored on its most changed genes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from pertflow.errors import DataError

log = logging.getLogger(__name__)

TAUS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, None)  # 0: nearest group only; None: plain average
KS = (5, 10, 20, 50, 100)
# Each training group's most changed genes the choice scores, as the benchmark scores top DEGs.
SCORE_GENES = 100
ALPHAS = tuple(float(a) for a in np.round(np.linspace(0, 1, 11), 2))

# decode_mean(Z, genes): mean decoded expression over the rows of Z on the gene indices `genes`.
Decoder = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Responses:
    """The training groups with cells in both conditions, in one embedding: per group the control
    mean and shift over all its cells, and up to ``max_cells`` of its cells per condition."""

    names: list[str]
    control_means: np.ndarray              # groups × dims
    shifts: np.ndarray                     # groups × dims
    controls: list[np.ndarray]             # per group: cells × dims
    perturbed: list[np.ndarray]
    deltas: list[np.ndarray] = field(default_factory=list)  # per control cell, by ``transport``

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What ``transferred`` needs, as numpy arrays for ``np.savez``: the names, control means
        and shifts and, with per-cell deltas, the control cells and their deltas (groups
        concatenated, ``sizes`` each). The perturbed cells only served the choice."""
        arrays = {"names": np.asarray(self.names, dtype=str),
                  "control_means": self.control_means, "shifts": self.shifts}
        if self.deltas:
            arrays |= {"controls": np.concatenate(self.controls),
                       "deltas": np.concatenate(self.deltas),
                       "sizes": np.array([len(c) for c in self.controls])}
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> "Responses":
        """``to_arrays``'s output (or an ``np.load``ed file holding it, and maybe more) back."""
        controls = deltas = []
        if "deltas" in arrays:
            bounds = np.cumsum(arrays["sizes"])[:-1]
            controls, deltas = (np.split(arrays[key], bounds) for key in ("controls", "deltas"))
        return cls([str(name) for name in arrays["names"]], arrays["control_means"],
                   arrays["shifts"], list(controls), [], list(deltas))


def paired_groups(condition: np.ndarray, groups: np.ndarray, control: str,
                  perturbed: str) -> list[str]:
    """Groups with training cells in both conditions, in order of appearance."""
    return [g for g in pd.unique(groups)
            if all(np.any((groups == g) & (condition == c)) for c in (control, perturbed))]


def require_paired_groups(condition: np.ndarray, groups: np.ndarray, control: str,
                          perturbed: str) -> list[str]:
    """``paired_groups``, failing with every group's conditions when there is none: no response
    can then be transferred."""
    names = paired_groups(condition, groups, control, perturbed)
    if not names:
        present = {str(g): sorted(map(str, pd.unique(condition[groups == g])))
                   for g in pd.unique(groups)}
        raise DataError(
            f"no training group has cells of both {control!r} and {perturbed!r}, so there is no "
            f"response to transfer (conditions per group: {present}). Check `control`, "
            "`perturbed` and `group_key` in the dataset's config.")
    return names


def group_responses(Z: np.ndarray, condition: np.ndarray, groups: np.ndarray, control: str,
                    perturbed: str, rng: np.random.Generator, max_cells: int = 500) -> Responses:
    """Each paired group's responses in the embedding ``Z`` (cells × dims, rows like ``groups``)."""
    names = require_paired_groups(condition, groups, control, perturbed)
    cells = {c: [] for c in (control, perturbed)}
    means = {c: [] for c in (control, perturbed)}
    for name in names:
        for c in (control, perturbed):
            rows = np.flatnonzero((groups == name) & (condition == c))
            means[c].append(Z[rows].mean(0))
            if len(rows) > max_cells:
                rows = np.sort(rng.choice(rows, max_cells, replace=False))
            cells[c].append(Z[rows])
    control_means = np.stack(means[control]).astype(np.float64)
    return Responses(list(map(str, names)), control_means,
                     np.stack(means[perturbed]) - control_means, cells[control], cells[perturbed])


def changed_genes(X, condition: np.ndarray, groups: np.ndarray, names: list[str], control: str,
                  perturbed: str, n_genes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per group of ``names``: its ``n_genes`` most changed genes (|mean perturbed − mean
    control| in ``X``) and their real perturbed means: what the inner choice scores against."""
    targets = []
    for name in names:
        means = [np.asarray(X[(groups == name) & (condition == c)].mean(axis=0)).ravel()
                 for c in (control, perturbed)]
        genes = np.argsort(-np.abs(means[1] - means[0]), kind="stable")[:n_genes]
        targets.append((genes, means[1][genes]))
    return targets


# ---------------------------------------------------------------------------------------------
# Similarity weights


def similarities(control_means: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``control_means`` with ``target``, all centred on the
    mean of ``control_means``'s rows."""
    centre = control_means.mean(0)
    rows, target = control_means - centre, target - centre
    norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(target)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = rows @ target / norms
    return np.nan_to_num(sim)  # a constant profile resembles nothing


def similarity_weights(sim: np.ndarray, tau: float | None) -> np.ndarray:
    """w ∝ exp(sim / τ); τ = 0: the most similar group(s) only; τ = None: equal weights."""
    if tau is None:
        return np.full(len(sim), 1 / len(sim))
    if tau == 0:
        top = np.isclose(sim, sim.max())
        return top / top.sum()
    w = np.exp((sim - sim.max()) / tau)
    return w / w.sum()


# ---------------------------------------------------------------------------------------------
# Per-cell deltas by optimal transport


def transport(responses: Responses) -> Responses:
    """Fill ``responses.deltas``: within each group, exact OT between its control and perturbed
    cells (uniform masses, squared Euclidean cost); each control cell's delta is the
    mass-weighted mean of the perturbed cells it is sent to, minus itself."""
    import ot  # POT is needed by the per-cell transfer only

    responses.deltas = []
    for controls, perturbed in zip(responses.controls, responses.perturbed):
        plan = ot.emd(np.full(len(controls), 1 / len(controls)),
                      np.full(len(perturbed), 1 / len(perturbed)),
                      ot.dist(controls, perturbed, metric="sqeuclidean"), numItermax=10**7)
        responses.deltas.append(plan @ perturbed / plan.sum(1, keepdims=True) - controls)
    return responses


def _unit_rows(Z: np.ndarray) -> np.ndarray:
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


def neighbour_deltas(cells: np.ndarray, bank: np.ndarray, bank_deltas: np.ndarray,
                     ks: tuple[int, ...]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For each k: every cell's cosine-weighted mean delta over its k most similar bank cells,
    and the share of weight each bank cell gets, summed over cells (for per-group weights)."""
    sim = _unit_rows(cells) @ _unit_rows(bank).T                      # cells × bank
    order = np.argsort(-sim, axis=1, kind="stable")
    out = {}
    for k in ks:
        top = order[:, :min(k, bank.shape[0])]
        w = np.clip(np.take_along_axis(sim, top, axis=1), 0, None)
        w = np.where(w.sum(1, keepdims=True) > 0, w, 1.0)             # nothing similar: plain mean
        w /= w.sum(1, keepdims=True)
        deltas = np.einsum("ck,ckd->cd", w, bank_deltas[top])
        share = np.zeros(bank.shape[0])
        np.add.at(share, top.ravel(), w.ravel() / len(cells))
        out[k] = deltas, share
    return out


# ---------------------------------------------------------------------------------------------
# Choosing τ or k, and α, on the training groups


@dataclass
class Choice:
    """A chosen transfer: ``setting`` is τ (similarity) or k (per_cell); ``scores`` the inner mean
    score of every (setting, α) tried (see ``choose``)."""

    method: str
    setting: float | int | None
    alpha: float
    inner_score: float
    scores: pd.DataFrame

    @classmethod
    def from_record(cls, record: dict) -> "Choice":
        setting = record.get("k" if record["method"] == "per_cell" else "tau")
        return cls(record["method"], setting, record["alpha"], record["inner_score"],
                   pd.DataFrame())

    def record(self, space: str, weights: dict[str, float] | None = None) -> dict:
        """What a model saves and puts in ``prediction.uns['pertflow']['transfer']``."""
        key = "k" if self.method == "per_cell" else "tau"
        out = {"method": self.method, "space": space, key: self.setting, "alpha": self.alpha,
               "inner_score": self.inner_score}
        if weights is not None:
            out["weights"] = {g: round(float(w), 6) for g, w in weights.items()}
        return out


def fallback(method: str, names: list[str]) -> Choice:
    """With one paired group nothing can be left out: its response, unscaled (logged)."""
    log.warning("only one training group (%s) has cells in both conditions, so the transfer "
                "cannot be chosen by leaving groups out: its own response is applied with α = 1",
                names[0])
    return Choice("average", None, 1.0, float("nan"), pd.DataFrame())


def choose(method: str, responses: Responses, targets: list[tuple[np.ndarray, np.ndarray]],
           decode_mean: Decoder, linear: bool) -> Choice:
    """The best (τ or k, α) by leave-one-group-out on the paired training groups.

    Group i is predicted from its own control cells with the responses of the other groups and
    scored on its most changed genes (``targets``) by the fraction of the squared error of
    unchanged controls that the transfer removes, 1 − MSE(α) / MSE(0): 0 for no better than the
    controls, 1 for its real perturbed means. The score is the mean over groups, so each weighs
    equally. (R², a correlation, barely sees the size of the shift, and so does not shrink α.)
    Ties go to the first in grid order, so α = 0 wins when no transfer helps."""
    names = responses.names
    if len(names) < 2:
        return fallback(method, names)
    settings = KS if method == "per_cell" else TAUS
    scores = np.zeros((len(settings), len(ALPHAS)))
    for i, (genes, real) in enumerate(targets):
        others = [j for j in range(len(names)) if j != i]
        if method == "per_cell":
            cells = responses.controls[i]
            bank = np.concatenate([responses.controls[j] for j in others])
            bank_deltas = np.concatenate([responses.deltas[j] for j in others])
            found = neighbour_deltas(cells, bank, bank_deltas, settings)
            deltas = [found[k][0] for k in settings]
        else:
            # One delta for all: a linear decoder needs only the mean of the cells.
            cells = responses.control_means[i][None] if linear else responses.controls[i]
            sim = similarities(responses.control_means[others], responses.control_means[i])
            deltas = [similarity_weights(sim, tau) @ responses.shifts[others] for tau in settings]
        for s, delta in enumerate(deltas):
            errors = np.array([np.mean(np.square(decode_mean(cells + alpha * delta, genes)
                                                 - real)) for alpha in ALPHAS])
            scores[s] += (1 - errors / max(errors[0], 1e-12)) / len(names)
    s, a = np.unravel_index(np.argmax(scores), scores.shape)
    labels = ["average" if x is None else x for x in settings]
    table = pd.DataFrame(scores, index=pd.Index(labels, name="tau" if method == "similarity"
                                                else "k"), columns=ALPHAS)
    choice = Choice(method, settings[s], ALPHAS[a], float(scores[s, a]), table)
    log.info("transfer (%s) chosen by leave-one-group-out over %s: %s = %s, α = %.2f, score "
             "%.4f (plain average at α = 1: %s)", method, ", ".join(names),
             "k" if method == "per_cell" else "τ", choice.setting, choice.alpha, choice.inner_score,
             f"{scores[-1, -1]:.4f}" if method == "similarity" else "n/a")
    return choice


# ---------------------------------------------------------------------------------------------
# Applying a choice to held-out control cells


def transferred(choice: Choice, responses: Responses,
                cells: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """The delta to add to each of ``cells`` (cells × dims, or one row for all) — α included —
    and each training group's share of the weight."""
    if choice.method == "per_cell":
        bank = np.concatenate(responses.controls)
        found = neighbour_deltas(cells, bank, np.concatenate(responses.deltas), (choice.setting,))
        deltas, share = found[choice.setting]
        owner = np.repeat(np.arange(len(responses.names)), [len(c) for c in responses.controls])
        weights = np.bincount(owner, weights=share, minlength=len(responses.names))
        return choice.alpha * deltas, dict(zip(responses.names, weights))
    tau = choice.setting if choice.method == "similarity" else None
    w = similarity_weights(similarities(responses.control_means, cells.mean(0)), tau)
    ranked = sorted(zip(responses.names, w), key=lambda pair: -pair[1])
    log.info("transfer weights: %s", ", ".join(f"{g} {x:.3f}" for g, x in ranked))
    return choice.alpha * (w @ responses.shifts)[None], dict(zip(responses.names, w))
