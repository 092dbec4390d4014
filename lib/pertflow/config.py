"""Reading the run config when the workflow is parsed: every check that needs no data (so a bad
config stops the run before any job), schema validation with its defaults, and what the rules
hand their jobs, resolved once: model entries and dataset specs."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pertflow.data.splits import HeldOut, held_out_of, listed_splits, names_several
from pertflow.errors import ConfigError
from pertflow.keys import Keys, dataset_keys
from pertflow.models.base import get_model_class
from pertflow.utils import ROOT

# The config schema: its `default:`s are the only defaults of the config's keys.
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
# Old qc: names and what they are called now (a dataset's `min_cells` is a group's minimum cells).
RENAMED_QC_KEYS = {"min_cells": "min_cells_per_gene"}
# What the preprocessing job gets of its dataset entry: the keys that shape the preprocessed data
# and no other, so that editing `held_out`, `min_cells` or a figure setting (`latent_colors`)
# does not rerun it (nor, through it, every training).
PREPROCESS_KEYS = ("rename", "condition_key", "control", "perturbed", "group_key", "counts",
                   "gene_symbols", "qc", "hvg")
# What the held_out_groups checkpoint gets: the keys and labels of the whole dataset (`perturbed:`
# may be `all`, known from the cells) and what decides the splits.
PLAN_KEYS = ("condition_key", "control", "perturbed", "group_key", "held_out", "min_cells")


def model_entry(config: dict, entry: str) -> dict[str, Any]:
    """The config entry ``entry`` under ``models:`` with its registry name, module and full
    params: what a training job learns from (its resources, such as threads and gpu, are read
    from the config entry and change nothing it learns)."""
    spec = config["models"][entry]
    name = spec.get("model", entry)
    cls = get_model_class(name, spec.get("module"))
    params = cls.check_params(spec.get("params"), where=f"config models.{entry}.params")
    return {"model": name, "module": spec.get("module"), "params": params}


def baseline_models(config: dict) -> list[str]:
    """Config model entries whose class declares itself a baseline (``Model.is_baseline``)."""
    def is_baseline(name: str) -> bool:
        entry = model_entry(config, name)
        return get_model_class(entry["model"], entry["module"]).is_baseline

    return [name for name in config["models"] if is_baseline(name)]


def check_models(config: dict) -> dict[str, dict[str, Any]]:
    """Every model entry resolved (``model_entry``), or a ConfigError at parse time on an unknown
    model name or parameter."""
    entries = {}
    for entry in config["models"]:
        try:
            entries[entry] = model_entry(config, entry)
        except ImportError as error:
            raise ConfigError(f"config models.{entry}: cannot import the model ({error}); "
                              "install its dependencies or fix `module:`.") from error
    return entries


def _qc_in_file(path: str | Path, dataset: str) -> dict:
    """The `qc:` of dataset ``dataset`` as the config file at ``path`` writes it."""
    with open(path, encoding="utf-8") as f:
        datasets = (yaml.safe_load(f) or {}).get("datasets") or {}
    return (datasets.get(dataset) or {}).get("qc") or {}


def check_renamed_keys(config: dict, configfiles: list[str | Path]) -> None:
    """Fail on a key spelled as before its rename, naming the file, the key and the new name (the
    schema alone would only say that the old name is unexpected)."""
    datasets = config.get("datasets")
    for dataset, spec in datasets.items() if isinstance(datasets, dict) else ():
        qc = spec.get("qc") if isinstance(spec, dict) else None
        for old, new in RENAMED_QC_KEYS.items():
            if isinstance(qc, dict) and old in qc:
                files = [str(p) for p in configfiles if old in _qc_in_file(p, dataset)]
                raise ConfigError(
                    f"{', '.join(files) or 'config'}: datasets.{dataset}.qc.{old} is now "
                    f"qc.{new} (the cells a gene must be detected in; the dataset's own "
                    "`min_cells` is the cells a held-out group needs). Rename the key.")


def check_sources(config: dict) -> None:
    """A dataset's `source: path:` is relative to the working directory (--directory): a missing
    file stops the run before any job, naming the absolute path tried."""
    # Imported here: pertflow.data.io imports the preprocessing, which reads this module.
    from pertflow.data.io import source_path

    for name, spec in config["datasets"].items():
        if "path" in spec["source"]:
            source_path(spec["source"]["path"], name)


@dataclass(frozen=True)
class DatasetSpec:
    """A validated `datasets:` entry (schema defaults filled in), resolved once at parse time:
    what the rules hand their jobs of it, so that no rule or script derives it again."""

    name: str
    entry: dict[str, Any]
    # Its splits are named perturbation/group (`perturbed:` a list or all), else by group alone.
    several: bool
    # The names of the splits the config lists, known before any data is read; None where an
    # `all` leaves them to the held_out_groups checkpoint.
    listed: tuple[str, ...] | None
    # The params of the jobs that read part of the entry (PREPROCESS_KEYS, PLAN_KEYS).
    preprocess: dict[str, Any]
    plan: dict[str, Any]

    def split(self, name: str) -> HeldOut:
        """The split named ``name`` (``HeldOut.name``): its perturbation and group."""
        return held_out_of(self.entry, name)

    def keys(self, split: str) -> Keys:
        """The experiment keys of the split named ``split``."""
        return dataset_keys(self.entry, self.split(split).perturbation)


def dataset_specs(config: dict) -> dict[str, DatasetSpec]:
    """A DatasetSpec per dataset of the validated ``config``."""
    specs = {}
    for name, entry in config["datasets"].items():
        several = names_several(entry["perturbed"])
        listed = listed_splits(entry, name)
        specs[name] = DatasetSpec(
            name=name, entry=entry, several=several,
            listed=None if listed is None else tuple(h.name(several) for h in listed),
            preprocess={key: entry[key] for key in PREPROCESS_KEYS if key in entry},
            plan={key: entry[key] for key in PLAN_KEYS})
    return specs


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


# ---------------------------------------------------------------------------------------------
# Schema validation with one short message

_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string",
               "array": "a list", "object": "a mapping", "boolean": "true or false",
               "null": "null (empty)"}


def _value_kind(value: Any) -> str:
    """What the user wrote, in the schema's words: 'a string', 'a list', ..."""
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return "true or false"
    for python_type, name in ((int, "integer"), (float, "number"), (str, "string"),
                              (list, "array"), (dict, "object")):
        if isinstance(value, python_type):
            return _TYPE_NAMES[name]
    return type(value).__name__


def _expected(schema: dict) -> str:
    """A short description of the values ``schema`` allows."""
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    branches = schema.get("oneOf") or schema.get("anyOf")
    if branches:
        if all(set(b) == {"required"} and len(b["required"]) == 1 for b in branches):
            return "exactly one of the keys " + ", ".join(b["required"][0] for b in branches)
        return " or ".join(_expected(b) for b in branches)
    types = schema.get("type")
    if types is None:
        return "a valid value"
    parts = []
    for kind in [types] if isinstance(types, str) else types:
        text = _TYPE_NAMES.get(kind, kind)
        if kind == "array" and isinstance(schema.get("items"), dict) and "type" in schema["items"]:
            item = _TYPE_NAMES.get(schema["items"]["type"], "a value").split(" ", 1)[1]
            text += f" of {item}s"
        if kind == "object" and schema.get("required"):
            text += " with key " + ", ".join(schema["required"])
        parts.append(text)
    return " or ".join(parts)


def _key_path(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _matches_type(value: Any, schema: dict) -> bool:
    types = schema.get("type")
    if types is None:
        return "const" not in schema and "enum" not in schema
    kinds = [types] if isinstance(types, str) else types
    return any(_value_kind(value) == _TYPE_NAMES.get(k) or (k == "number" and isinstance(
        value, int) and not isinstance(value, bool)) for k in kinds)


def _describe(error) -> tuple[list, str]:
    """(key path, what is wrong and what is valid) for a jsonschema ValidationError."""
    import difflib

    path, value, schema = list(error.absolute_path), error.instance, error.schema
    kind = error.validator
    if kind == "additionalProperties":
        valid = list(schema.get("properties", {}))
        unknown = [k for k in value if k not in valid]
        key = unknown[0]
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`? " if close else ""
        return path + [key], (f"unknown key; {hint}Valid keys here: {', '.join(valid)}")
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return path, f"the required key `{missing[0]}` is missing"
    if "propertyNames" in error.absolute_schema_path:
        return path, (f"the name {value!r} is not allowed; use only letters, digits "
                      "and _ . -")
    if kind in ("oneOf", "anyOf"):
        branches = error.validator_value
        fitting = [i for i, b in enumerate(branches) if _matches_type(value, b)]
        if isinstance(value, dict) and all(set(b) == {"required"} for b in branches):
            given = [b["required"][0] for b in branches if b["required"][0] in value]
            return path, (f"give {_expected(schema)} (given: {', '.join(given) or 'none'})")
        if len(fitting) == 1:
            inner = [e for e in error.context if e.schema_path and e.schema_path[0] == fitting[0]]
            if inner:
                return _describe(min(inner, key=lambda e: len(e.absolute_path) * -1))
        return path, _wrong_type(value, _expected(schema))
    if kind == "type":
        return path, _wrong_type(value, _expected(schema))
    if kind == "enum":
        return path, f"{value!r} is not allowed; expected {_expected(schema)}"
    if kind == "const":
        return path, f"{value!r} is not allowed; expected {schema['const']!r}"
    return path, error.message


def _wrong_type(value: Any, expected: str) -> str:
    text = f"{value!r} is {_value_kind(value)}; expected {expected}"
    if isinstance(value, str) and "a list" in expected:
        text += f" (write a list, e.g. [{value}])"
    return text


def _file_with_key(path: list, configfiles: list) -> str:
    """The last config file that sets the key at ``path`` (later files override earlier ones)."""
    found = None
    for file in configfiles:
        try:
            with open(file, encoding="utf-8") as f:
                node = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue
        for part in path:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                break
        else:
            found = file
    if found is None:
        return str(configfiles[-1]) if configfiles else "config"
    return str(found)


def validate_config(config: dict, schema_path: str | Path,
                    configfiles: list[str | Path] = ()) -> None:
    """Validate ``config`` against the JSON schema at ``schema_path`` and fill in its defaults,
    as ``snakemake.utils.validate(config, schema, set_default=True)`` does; on the first problem
    raise one short ConfigError naming the config file, the key path, what is wrong and what is
    valid (the closest valid key for an unknown one), without the schema."""
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import relevance

    with open(schema_path, encoding="utf-8") as f:
        schema = yaml.safe_load(f)
    properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, props, instance, subschema):
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub:
                    # A copy: filling the defaults inside it must not change the schema's.
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, subschema)

    validator_class = validators.extend(Draft202012Validator, {"properties": set_defaults})
    errors = list(validator_class(schema).iter_errors(config))
    if not errors:
        return
    error = max(errors, key=relevance)
    path, problem = _describe(error)
    where = _file_with_key(path, [str(p) for p in configfiles])
    raise ConfigError(f"{where}: {_key_path(path)}: {problem}.")


@cache
def _schema() -> dict:
    with open(SCHEMA, encoding="utf-8") as f:
        return yaml.safe_load(f)


def schema_defaults(definition: str, key: str) -> dict[str, Any]:
    """{name: default} of the options under ``key`` of the schema's ``definition`` (e.g.
    ``"dataset", "qc"``), for a library caller that has no validated config."""
    options = _schema()["$defs"][definition]["properties"][key]["properties"]
    return {name: copy.deepcopy(option["default"]) for name, option in options.items()}


def check_screens(config: dict) -> None:
    """Fail at parse time, before anything runs, on what a ``screens:`` entry of a validated
    config (schema defaults filled in) gets wrong without its data: its contrastiveVI params,
    checked by the model as ``check_models`` checks the benchmark's; params the screen sets
    itself; its columns; a name a dataset also has."""
    # Imported here: the screen analysis loads scanpy, which reading a benchmark config skips.
    from pertflow.screen.analysis import CONDITION, FOLD, MODEL, model_params, params_from_screen

    for name, spec in config["screens"].items():
        where = f"config screens.{name}"
        if name in config.get("datasets", {}):
            raise ConfigError(f"{where}: a dataset is also named '{name}' and both write "
                              f"results/{name}/; rename the screen or the dataset.")
        from_screen = sorted(set(spec["params"]) & set(params_from_screen(spec)))
        if from_screen:
            raise ConfigError(f"{where}.params.{from_screen[0]}: set from the screen's "
                              "`perturbation_key:` and `covariates:`; remove it from `params:`.")
        key = spec["perturbation_key"]
        if key in spec["covariates"]:
            raise ConfigError(f"{where}.covariates: lists the perturbation_key '{key}', whose "
                              "effects would be taken for a covariate's; remove it.")
        for column in (key, *spec["covariates"]):
            if column in (CONDITION, FOLD):
                raise ConfigError(f"{where}: obs column '{column}' has the name of a column the "
                                  "analysis adds; rename it in the data.")
        get_model_class(MODEL).check_params(model_params(spec), where=f"{where}.params")
