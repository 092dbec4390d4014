"""Changing a config must not throw away finished work: after a finished tiny run (two baselines,
one held-out group), a figure-only key (`latent_colors`) reruns nothing, another `held_out` list
adds or removes only that group's jobs, and the same config with its keys in another order reruns
nothing (dry runs, `-n`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import GROUP, SNAKEMAKE, TINY_CONFIG, TINY_METRICS

pytestmark = [pytest.mark.workflow, pytest.mark.slow]
OTHER = "Monocyte"
TRAINING = {"preprocess", "held_out_groups", "split", "train_predict", "evaluate"}


def config() -> dict:
    config = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    config["models"] = {"control": {}, "mean_shift": {}}
    return config


def snakemake(workdir: Path, config: dict | str, *options: str) -> str:
    """Run with ``config`` (a mapping, or the text of the config file)."""
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    (workdir / "config.yaml").write_text(text)
    result = subprocess.run([*SNAKEMAKE, str(TINY_METRICS), "--directory", str(workdir),
                             "--configfile", str(workdir / "config.yaml"), *options],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def planned(log: str) -> Counter:
    """{(rule, split or None): jobs} a dry run plans (a one-perturbation split is its group)."""
    jobs = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):\n(?:    .*\n)*?    wildcards: (.*)$",
                      log, re.M)
    return Counter((rule, dict(re.findall(r"(\w+)=([^,]+)", w)).get("split")) for rule, w in jobs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("rerun")
    snakemake(workdir, config())
    assert "Nothing to be done" in snakemake(workdir, config(), "-n")
    return workdir


def test_a_figure_setting_reruns_no_training(finished):
    changed = config()
    changed["datasets"]["sim"]["latent_colors"] = ["cycling"]
    assert "Nothing to be done" in snakemake(finished, changed, "-n")


def test_another_held_out_group_adds_only_its_jobs(finished):
    changed = config()
    changed["datasets"]["sim"]["held_out"] = [GROUP, OTHER]
    jobs = planned(snakemake(finished, changed, "-n"))
    assert jobs[("split", OTHER)] == 1
    assert jobs[("train_predict", OTHER)] == jobs[("evaluate", OTHER)] == 2  # both models
    assert not [job for job in jobs if job[0] in TRAINING and job[1] == GROUP], jobs
    assert ("preprocess", None) not in jobs

    # Removing a group again: no training, no split, only the tables made from every run.
    changed["datasets"]["sim"]["held_out"] = [OTHER]
    jobs = planned(snakemake(finished, changed, "-n"))
    assert jobs[("train_predict", OTHER)] == 2
    assert not [job for job in jobs if job[0] in TRAINING - {"held_out_groups"} and
                job[1] != OTHER], jobs

    # With the new list run, going back to the first reruns nothing but the aggregation.
    snakemake(finished, changed)
    jobs = planned(snakemake(finished, config(), "-n"))
    assert not [job for job in jobs if job[0] in TRAINING - {"held_out_groups"}], jobs


def reordered(node):
    """``node`` with the keys of every mapping in it in reverse order, recursively."""
    if isinstance(node, dict):
        return {key: reordered(node[key]) for key in reversed(node)}
    if isinstance(node, list):
        return [reordered(item) for item in node]
    return node


def test_the_same_config_with_its_keys_in_another_order_reruns_nothing(reference, tmp_path):
    # A copy of the session's finished tiny run, whose config file has its keys sorted
    # (yaml.safe_dump); written back with every mapping's keys reversed.
    workdir = tmp_path / "reference"
    shutil.copytree(reference, workdir, symlinks=True)
    text = yaml.safe_dump(reordered(TINY_CONFIG), sort_keys=False)
    assert text != yaml.safe_dump(TINY_CONFIG) and yaml.safe_load(text) == TINY_CONFIG
    assert "Nothing to be done" in snakemake(workdir, text, "-n")
