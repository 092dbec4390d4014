"""The docs say what the code does: config/README.md's model-param table is the one generated from
the model classes, every param has a one-line meaning, and every schema key is documented."""

from __future__ import annotations

import re

import yaml

from conftest import ROOT
from pertflow.__main__ import main, models_table, readme_table
from pertflow.models.base import _REGISTRY, _import_model_modules

README = ROOT / "config" / "README.md"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def shipped_models() -> dict:
    _import_model_modules()
    return {name: cls for name, cls in _REGISTRY.items()
            if cls.__module__.startswith("pertflow.models.")}


def test_every_param_has_a_meaning_and_every_meaning_a_param():
    for name, cls in shipped_models().items():
        assert set(cls.defaults) - set(cls.param_help) == set(), (name, "params without help")
        assert set(cls.param_help) - set(cls.defaults) == set(), (name, "help of no param")
        assert all(text.strip() and "\n" not in text for text in cls.param_help.values()), name
        assert set(cls.choices) <= set(cls.defaults), name


def test_readme_table_is_the_generated_one():
    assert readme_table(README) == models_table(), (
        "config/README.md's model params are stale: run "
        "`python -m pertflow models --readme config/README.md`")


def test_models_command_prints_every_model_and_param(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, cls in shipped_models().items():
        assert f"#### `{name}`" in out
        for param, allowed in cls.choices.items():
            assert all(f"`{value}`" in out for value in allowed), (name, param)
        for param in cls.defaults:
            assert f"| `{param}` |" in out


def schema_keys(node) -> set[str]:
    """Every key a config may set: the names under `properties` anywhere in the schema."""
    keys = set()
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            keys.add(name)
        for value in node.values():
            keys |= schema_keys(value)
    elif isinstance(node, list):
        for value in node:
            keys |= schema_keys(value)
    return keys


def test_every_schema_key_is_in_the_config_readme():
    text = README.read_text(encoding="utf-8")
    keys = schema_keys(yaml.safe_load(SCHEMA.read_text(encoding="utf-8")))
    assert {"latent_colors", "held_out", "n_cells", "mem_mb"} <= keys
    # A key counts as listed when it is a word of some `code span` (e.g. `qc: {min_genes, …}`).
    listed = {word for span in re.findall(r"`([^`]+)`", text)
              for word in re.findall(r"[A-Za-z0-9_]+", span)}
    missing = sorted(keys - listed)
    assert not missing, f"config/README.md does not mention {missing}"
