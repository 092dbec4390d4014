"""Leave-one-group-out splits, one per held-out (perturbation, group): that group's cells under
that perturbation are the truth and never train.

A dataset names its perturbations by one label (``perturbed: stimulated``), a list, or ``all``
(every label of the condition column but the control). Each split is named by its group alone
when the dataset names one label, and ``perturbation/group`` otherwise, so a one-perturbation
dataset keeps its paths."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from pertflow.errors import DataError
from pertflow.keys import Keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOut:
    """One split: the group whose cells under the perturbation are hidden and predicted."""

    perturbation: str
    group: str

    def name(self, prefixed: bool) -> str:
        """The split's path component: ``group``, or ``perturbation/group`` when ``prefixed``."""
        return f"{self.perturbation}/{self.group}" if prefixed else self.group


def names_several(perturbed: str | list[str]) -> bool:
    """Whether a dataset's ``perturbed:`` names its perturbations as several (a list, or
    ``all``): its splits are then named ``perturbation/group``."""
    return not isinstance(perturbed, str) or perturbed == "all"


def perturbation_labels(perturbed: str | list[str], control: str, present, condition_key: str,
                        dataset: str) -> list[str]:
    """The perturbation labels ``perturbed:`` names, checked against the labels ``present`` in
    obs[``condition_key``]: ``all`` is every present label but ``control``."""
    present = sorted(map(str, present))
    if perturbed == "all":
        labels = [label for label in present if label != control]
        if not labels:
            raise DataError(f"dataset '{dataset}': `perturbed: all` found no label besides the "
                            f"control '{control}' in obs['{condition_key}'] (values: "
                            f"{', '.join(present)}). The benchmark needs perturbed cells.")
        return labels
    labels = [perturbed] if isinstance(perturbed, str) else list(perturbed)
    for label in labels:
        if label == control:
            raise DataError(f"dataset '{dataset}': perturbed label '{label}' is the control "
                            f"label; list only perturbations in `perturbed:` (the control is "
                            "`control:`).")
        if label not in present:
            raise DataError(
                f"dataset '{dataset}': perturbed label '{label}' not found in "
                f"obs['{condition_key}'] (values: {', '.join(present)}). Fix `perturbed:` or map "
                f"it with `rename: labels: {condition_key}:`.")
    return labels


def cell_counts(adata: ad.AnnData, keys: Keys, perturbations: list[str]) -> pd.DataFrame:
    """Cells per group (rows) and condition (columns: control, then each perturbation)."""
    table = pd.crosstab(adata.obs[keys.group], adata.obs[keys.condition])
    return table.reindex(columns=[keys.control, *perturbations], fill_value=0)


def requested_groups(held_out, perturbations: list[str],
                     dataset: str) -> dict[str, str | list[str]]:
    """``held_out:`` as {perturbation: 'all' or groups}: a list or ``all`` applies to every
    perturbation; a mapping names its own (each must be a perturbation of the dataset). In the
    order of ``perturbations``, not of the mapping: the splits do not depend on how the config
    orders its keys."""
    if not isinstance(held_out, dict):
        return dict.fromkeys(perturbations, held_out)
    for label in held_out:
        if label not in perturbations:
            raise DataError(f"dataset '{dataset}': `held_out:` names perturbation '{label}', "
                            f"which is not one of `perturbed:` ({', '.join(perturbations)}). "
                            "Fix the key or add the label to `perturbed:`.")
    return {label: held_out[label] for label in perturbations if label in held_out}


def choose_held_out(adata: ad.AnnData, keys: Keys, perturbations: list[str], held_out,
                    min_cells: int, dataset: str) -> list[HeldOut]:
    """The splits of ``held_out``: ``all`` takes every (perturbation, group) with at least
    ``min_cells`` control and perturbed cells, logging the pairs skipped with their counts; listed
    groups must exist and have enough cells. ``held_out`` may also map perturbations to
    ``all`` or to groups."""
    counts = cell_counts(adata, keys, perturbations)
    chosen = []
    for perturbation, groups in requested_groups(held_out, perturbations, dataset).items():
        enough = (counts[keys.control] >= min_cells) & (counts[perturbation] >= min_cells)
        what = (f"under '{perturbation}'" if len(perturbations) > 1 else "").strip()
        if groups == "all":
            for group in counts.index[~enough]:
                log.warning("dataset '%s': not holding out group '%s' %s: %d control and %d "
                            "perturbed cells, fewer than min_cells=%d", dataset, group, what,
                            counts.at[group, keys.control], counts.at[group, perturbation],
                            min_cells)
            groups = [str(g) for g in counts.index[enough]]
        for group in groups:
            if group not in counts.index:
                raise DataError(
                    f"dataset '{dataset}': held-out group '{group}' not found in "
                    f"obs['{keys.group}'] (groups: {', '.join(map(str, counts.index))}). "
                    "Fix `held_out:`.")
            if not enough[group]:
                raise DataError(
                    f"dataset '{dataset}': held-out group '{group}' has "
                    f"{counts.at[group, keys.control]} control and "
                    f"{counts.at[group, perturbation]} '{perturbation}' cells; it needs at least "
                    f"min_cells={min_cells} of each. Remove it from `held_out:` or lower "
                    "min_cells.")
            if counts[perturbation].sum() == counts.at[group, perturbation]:
                raise DataError(
                    f"dataset '{dataset}': holding out '{group}' leaves no '{perturbation}' "
                    "cell to train on; at least two groups need cells of each perturbation.")
            chosen.append(HeldOut(perturbation, str(group)))
    if not chosen:
        raise DataError(f"dataset '{dataset}': no group in '{keys.group}' has {min_cells} "
                        "control and perturbed cells; lower `min_cells` or check the labels.")
    log.info("dataset '%s': holding out %s", dataset,
             [h.name(len(perturbations) > 1) for h in chosen])
    return chosen


def listed_splits(spec: dict, dataset: str) -> list[HeldOut] | None:
    """The splits a dataset entry names before any data is read: when ``perturbed:`` lists its
    labels and ``held_out:`` its groups (per perturbation or for all); None when either is
    ``all`` (the checkpoint decides, from the preprocessed cells)."""
    perturbed, held_out = spec["perturbed"], spec["held_out"]
    if perturbed == "all" or held_out == "all":
        return None
    labels = [perturbed] if isinstance(perturbed, str) else list(perturbed)
    requested = requested_groups(held_out, labels, dataset)
    if "all" in requested.values():
        return None
    return [HeldOut(p, g) for p, groups in requested.items() for g in groups]


def held_out_of(spec: dict, name: str) -> HeldOut:
    """The split named ``name`` (``HeldOut.name``) of a dataset entry."""
    if names_several(spec["perturbed"]):
        perturbation, group = name.split("/", 1)
        return HeldOut(perturbation, group)
    return HeldOut(spec["perturbed"], name)


def split(adata: ad.AnnData, keys: Keys, group: str,
          hide_other_perturbations: bool) -> dict[str, ad.AnnData]:
    """``train``: every cell except the group's cells under ``keys.perturbed`` (and, with
    ``hide_other_perturbations``, under any other perturbation); ``control``: the group's control
    cells (the model's input); ``truth``: the group's cells under ``keys.perturbed`` (never seen
    in training)."""
    in_group = (adata.obs[keys.group] == group).to_numpy()
    condition = adata.obs[keys.condition].to_numpy()
    perturbed, control = condition == keys.perturbed, condition == keys.control
    hidden = in_group & (~control if hide_other_perturbations else perturbed)
    return {
        "train": adata[~hidden].copy(),
        "control": adata[in_group & control].copy(),
        "truth": adata[in_group & perturbed].copy(),
    }


def labelled_cells(adata: ad.AnnData, keys: Keys, perturbations: list[str]) -> np.ndarray:
    """Mask of the cells labelled control or one of ``perturbations`` (the others are dropped)."""
    return adata.obs[keys.condition].isin([keys.control, *perturbations]).to_numpy()
