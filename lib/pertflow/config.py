"""Reading the validated run config: experiment keys per dataset and resolved model entries,
and the checks Snakemake's config loading does not make."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pertflow.errors import ConfigError
from pertflow.models.base import get_model_class


def model_entry(config: dict, entry: str) -> dict[str, Any]:
    """The config entry ``entry`` under ``models:`` with its registry name and full params."""
    spec = config["models"][entry]
    name = spec.get("model", entry)
    cls = get_model_class(name, spec.get("module"))
    params = cls.check_params(spec.get("params"), where=f"config models.{entry}.params")
    return {"model": name, "module": spec.get("module"), "params": params,
            "gpu": int(spec.get("gpu", 0)), "threads": int(spec.get("threads", 1))}


def baseline_models(config: dict) -> list[str]:
    """Config model entries whose class declares itself a baseline (``Model.is_baseline``)."""
    def is_baseline(name: str) -> bool:
        entry = model_entry(config, name)
        return get_model_class(entry["model"], entry["module"]).is_baseline

    return [name for name in config["models"] if is_baseline(name)]


def check_models(config: dict) -> None:
    """Fail at parse time, before anything runs, on unknown model names or parameters."""
    for entry in config["models"]:
        try:
            model_entry(config, entry)
        except ImportError as error:
            raise ConfigError(f"config models.{entry}: cannot import the model ({error}); "
                              "install its dependencies or fix `module:`.") from error


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that refuses a key repeated in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{Path(self.name)}, line {line}: key '{key}' is given twice in the same "
                    f"mapping (first on line {seen[key]}); YAML would silently keep only the "
                    "last one (e.g. two datasets or models of the same name). Rename or merge "
                    "them.")
            seen[key] = line
        return super().construct_mapping(node, deep)


def check_unique_keys(paths: list[str | Path]) -> None:
    """Fail on any config file in which a key (e.g. a dataset name) appears twice."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            yaml.load(f, Loader=_UniqueKeyLoader)
