"""What the figures show, decided without drawing: the split each perturbation's row of scGen's
Figure 3 shows, and the params that label the entries of one model class in the latent
comparison. No matplotlib here: workflow/rules/figures.smk imports this module while Snakemake
builds the DAG."""

from __future__ import annotations

from pertflow.data.splits import held_out_of


def panel_splits(spec: dict, files: dict[str, dict]) -> dict[str, dict]:
    """Of a dataset's splits ({split name: its files}, as split_files gives them, in order), the
    one each perturbation's row of perturbation_panels shows: the entry's ``panel_group`` where it
    is held out under that perturbation, else the perturbation's first held-out group. Returns
    {split name: its files but the control cells (not drawn)}, perturbations in the order of
    their first split."""
    chosen = {}
    for name in files:
        held = held_out_of(spec, name)
        if held.perturbation not in chosen or held.group == spec.get("panel_group"):
            chosen[held.perturbation] = name
    return {name: {key: path for key, path in files[name].items() if key != "control"}
            for name in chosen.values()}


def differing_params(params: dict[str, dict]) -> dict[str, dict]:
    """For each entry (name: its params), the params whose values are not the same in every
    entry: what tells the entries of one model class apart (nothing for a lone entry)."""
    names = sorted({key for p in params.values() for key in p}, key=str)
    differ = [key for key in names
              if len({repr(p.get(key)) for p in params.values()}) > 1]
    return {entry: {key: p.get(key) for key in differ} for entry, p in params.items()}
