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
                    instance.setdefault(name, sub["default"])
        yield from properties(validator, props, instance, subschema)

    validator_class = validators.extend(Draft202012Validator, {"properties": set_defaults})
    errors = list(validator_class(schema).iter_errors(config))
    if not errors:
        return
    error = max(errors, key=relevance)
    path, problem = _describe(error)
    where = _file_with_key(path, [str(p) for p in configfiles])
    raise ConfigError(f"{where}: {_key_path(path)}: {problem}.")
