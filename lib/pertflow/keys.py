"""Which obs columns and labels define an experiment: the one concept every layer shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Keys:
    """Which obs columns and labels define the experiment."""

    condition: str
    control: str
    perturbed: str
    group: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def dataset_keys(spec: dict) -> Keys:
    """The keys of a dataset entry of the config (``condition_key``, ``control``, ...)."""
    return Keys(condition=spec["condition_key"], control=spec["control"],
                perturbed=spec["perturbed"], group=spec["group_key"])
