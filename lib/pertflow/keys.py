"""Which obs columns and labels define an experiment: the one concept every layer shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Keys:
    """Which obs columns and labels define the experiment: ``perturbed`` is the perturbation a
    split predicts (a dataset with several has one Keys per perturbation)."""

    condition: str
    control: str
    perturbed: str
    group: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def dataset_keys(spec: dict, perturbation: str | None = None) -> Keys:
    """The keys of a dataset entry of the config (``condition_key``, ``control``, ...), for
    ``perturbation`` (needed when ``perturbed:`` names several; otherwise its one label)."""
    if perturbation is None:
        if not isinstance(spec["perturbed"], str) or spec["perturbed"] == "all":
            raise ValueError("a dataset with several perturbations has keys per perturbation; "
                             "name one")
        perturbation = spec["perturbed"]
    return Keys(condition=spec["condition_key"], control=spec["control"],
                perturbed=perturbation, group=spec["group_key"])
