"""Bad input fails early, says what is wrong and how to fix it, trains nothing and leaves no output.

Every case runs the workflow. Problems in the config itself stop Snakemake while it parses (one run
per case). Problems in the data each get a dataset of their own in one `--keep-going` run, so the
cases fail side by side in their own jobs; each case then checks its own dataset's logs and files.
"""

from __future__ import annotations

import copy
import http.server
import re
import subprocess
import textwrap
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from conftest import SNAKEMAKE, TINY_MODELS
from pertflow.config import schema_defaults, validate_config
from pertflow.errors import ConfigError
from pertflow.models.baselines import MeanShift
from pertflow.simulate.experiment import simulate

GOOD = {"condition_key": "condition", "control": "control", "perturbed": "stimulated",
        "group_key": "cell_type", "held_out": ["T-helper"], "min_cells": 5}
MODELS = {"control": {}}
# Too large a batch for the ~250 training cells: the one case that fails at training time.
HUGE_BATCH = {"scgen": {"params": {**TINY_MODELS["scgen"], "batch_size": 100_000}}}


def config_text(datasets: dict, models: dict = MODELS) -> str:
    return yaml.safe_dump({"datasets": datasets, "models": models})


def snakemake(workdir: Path, config: str, *extra: str) -> subprocess.CompletedProcess:
    path = workdir / "config.yaml"
    path.write_text(config)
    return subprocess.run([*SNAKEMAKE, *extra, "--directory", str(workdir), "--configfile",
                           str(path)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small valid h5ad and broken variants of it, as {name: path}."""
    root = tmp_path_factory.mktemp("data")
    good = simulate(n_cells=300, n_genes=200, n_cell_types=3, n_ifn_genes=20,
                    n_cell_cycle_genes=10, seed=0)
    variants = {"good": good}
    variants["one_condition"] = good[(good.obs["condition"] == "control").to_numpy()].copy()
    variants["no_b_controls"] = good[~((good.obs["cell_type"] == "B")
                                       & (good.obs["condition"] == "control")).to_numpy()].copy()
    variants["nan"] = good.copy()
    variants["nan"].X.data[0] = np.nan
    variants["negative"] = good.copy()
    variants["negative"].X.data[0] = -1.0
    variants["lognorm"] = good.copy()
    variants["lognorm"].X = sp.csr_matrix(np.log1p(good.X.toarray()))
    variants["three_labels"] = good.copy()  # control, stimulated and infected in every type
    condition = good.obs["condition"].astype(str).to_numpy()
    condition[np.flatnonzero(condition == "stimulated")[::2]] = "infected"
    variants["three_labels"].obs["condition"] = condition
    variants["dup_genes"] = good.copy()
    variants["dup_genes"].var_names = ["G0"] + list(good.var_names[1:-1]) + ["G0"]
    paths = {}
    for name, adata in variants.items():
        paths[name] = root / f"{name}.h5ad"
        adata.write_h5ad(paths[name])
    paths["truncated"] = root / "truncated.h5ad"
    content = paths["good"].read_bytes()
    paths["truncated"].write_bytes(content[: len(content) // 2])
    paths["not_hdf5"] = root / "not_hdf5.h5ad"
    paths["not_hdf5"].write_text("cell,gene\n")
    return paths


@pytest.fixture(scope="module")
def server(data):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(data["good"].parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


# Config cases: (config text, what the message must say). Where the schema catches a problem,
# Snakemake's validation message names the key and what is expected of its value.
def with_dataset(**changes) -> dict:
    return {"sim": {"source": {"path": "data.h5ad"}, **GOOD, **changes}}


DATASET_TWICE = 2 * textwrap.indent(yaml.safe_dump(with_dataset()), "  ")
CONFIG_CASES = {
    # Snakemake reads the config file before any workflow code runs: its own message.
    "malformed_yaml": ("datasets: {sim: [unclosed\n", ["not valid JSON or YAML"]),
    # The schema's message: file, key path, what is wrong and what is valid, without the schema.
    "unknown_key": (config_text(with_dataset(held_out_groups=["T-helper"])),
                    ["config.yaml: datasets.sim.held_out_groups: unknown key; did you mean "
                     "`held_out`?"]),
    "wrong_type": (config_text(with_dataset(min_cells="ten")),
                   ["datasets.sim.min_cells: 'ten' is a string; expected an integer"]),
    "string_for_list": (config_text(with_dataset(held_out="T-helper")),
                        ["datasets.sim.held_out: 'T-helper' is a string; expected 'all' or a "
                         "list of strings or a mapping (write a list, e.g. [T-helper])"]),
    # qc.min_cells was renamed (a dataset's min_cells is a group's minimum cells).
    "renamed_qc_key": (config_text(with_dataset(qc={"min_cells": 3})),
                       ["config.yaml: datasets.sim.qc.min_cells is now qc.min_cells_per_gene",
                        "Rename the key"]),
    "dataset_name_twice": ("datasets:\n" + DATASET_TWICE + "models: {control: {}}\n",
                           ["key 'sim' is given twice", "Rename or merge them"]),
    "model_not_in_registry": (config_text(with_dataset(), {"scgenn": {}}),
                              ["model 'scgenn' is not in the registry", "Fix the name"]),
    "unknown_model_param": (config_text(with_dataset(), {"mean_shift": {"params": {"balance": 1}}}),
                            ["unknown parameter(s) ['balance']", "Fix the spelling"]),
}


@pytest.mark.workflow
@pytest.mark.parametrize("case", CONFIG_CASES)
def test_config_problem_stops_the_run_before_any_job(case, tmp_path):
    text, expected = CONFIG_CASES[case]
    result = snakemake(tmp_path, text)
    assert result.returncode != 0
    for part in expected:
        assert part in result.stdout + result.stderr, (part, result.stderr[-3000:])
    assert not (tmp_path / "results").exists()
    # The message stays on screen: no schema dump after it.
    assert "Failed validating" not in result.stderr
    assert len(result.stderr.splitlines()) <= 10, result.stderr


# Data cases: dataset changes over GOOD, its source (a file from `data`, or a URL on `server`),
# and what the failing job's log must say: the problem, then the fix.
DATA_CASES = {
    "missing_condition_column": ({"condition_key": "treatment"}, "good",
                                 ["obs column 'treatment' (condition_key) not found",
                                  "Fix `condition_key`"]),
    "label_absent": ({"perturbed": "IFN"}, "good",
                     ["perturbed label 'IFN' not found", "Fix `perturbed:`"]),
    "perturbed_list_holds_the_control": ({"perturbed": ["stimulated", "control"]}, "three_labels",
                                         ["perturbed label 'control' is the control label",
                                          "list only perturbations in `perturbed:`"]),
    "perturbed_list_label_absent": ({"perturbed": ["infected", "IFN"]}, "three_labels",
                                    ["perturbed label 'IFN' not found in obs['condition'] "
                                     "(values: control, infected, stimulated)",
                                     "Fix `perturbed:`"]),
    "held_out_pair_with_too_few_cells": ({"perturbed": "all", "held_out": {"infected": ["B"]},
                                          "min_cells": 500}, "three_labels",
                                         ["held-out group 'B' has", "'infected' cells; it needs "
                                          "at least min_cells=500", "Remove it from `held_out:`"]),
    "one_condition": ({}, "one_condition",
                      ["only one condition ('control')", "Point `condition_key:`"]),
    "held_out_group_absent": ({"held_out": ["Nope"]}, "good",
                              ["held-out group 'Nope' not found", "Fix `held_out:`"]),
    "held_out_group_without_controls": ({"held_out": ["B"]}, "no_b_controls",
                                        ["held-out group 'B' has 0 control",
                                         "Remove it from `held_out:`"]),
    "non_finite_values": ({}, "nan", ["NaN or infinite values", "clean the matrix"]),
    "negative_counts": ({}, "negative", ["negative values, so it is not raw counts",
                                         "Point `counts:` at raw counts"]),
    "non_integer_counts": ({"counts": "X"}, "lognorm",
                           ["is not integer, so it is not raw counts", "counts: recover"]),
    "recover_on_raw_counts": ({"counts": "recover"}, "good",
                              ["these look like raw counts", "Use `counts: X`"]),
    "duplicated_genes": ({}, "dup_genes", ["duplicated gene names", "var_names_make_unique"]),
    "truncated_h5ad": ({}, "truncated", ["the file is truncated or corrupt",
                                         "download it again"]),
    "not_hdf5": ({}, "not_hdf5", ["not an HDF5/h5ad file", "point `source:` at an .h5ad"]),
    "url_404": ({}, "url:missing.h5ad", ["HTTP 404", "Check the URL"]),
    "checksum_mismatch": ({}, "url:good.h5ad#" + "0" * 64,
                          ["checksum mismatch", "update `sha256:`"]),
    "fewer_cells_than_a_batch": ({}, "good", ["fewer than one training batch needs",
                                               "Lower `batch_size`"]),
}
# The cases the held_out_groups checkpoint refuses, after preprocessing (QC removes cells), and
# what the jobs before it wrote.
CHECKPOINT_CASES = {"held_out_pair_with_too_few_cells", "held_out_group_absent",
                    "held_out_group_without_controls"}
PREPROCESSED = {"preprocessed.h5ad", "qc.json", "benchmarks/preprocess.tsv"}


def source(name: str, data: dict, server: str) -> dict:
    if not name.startswith("url:"):
        return {"path": str(data[name])}
    path, _, sha256 = name[4:].partition("#")
    return {"url": f"{server}/{path}", "retries": 0, **({"sha256": sha256} if sha256 else {})}


@pytest.fixture(scope="module")
def data_run(data, server, tmp_path_factory):
    """One `--keep-going` run over a dataset per data case; every model trains with a batch too
    large for the data, so a dataset that got through preprocessing fails before training."""
    workdir = tmp_path_factory.mktemp("bad_data")
    datasets = {case: {**GOOD, **changes, "source": source(name, data, server)}
                for case, (changes, name, _) in DATA_CASES.items()}
    targets = [f"results/{case}/metrics.csv" for case in DATA_CASES]
    result = snakemake(workdir, config_text(datasets, HUGE_BATCH), *targets, "--keep-going")
    return workdir, result


@pytest.mark.workflow
@pytest.mark.slow
@pytest.mark.parametrize("case", DATA_CASES)
def test_data_problem_fails_its_job_with_the_fix_and_leaves_nothing(case, data_run):
    workdir, result = data_run
    assert result.returncode != 0
    results = workdir / "results" / case
    logs = "".join(path.read_text() for path in results.rglob("*.log"))
    for part in DATA_CASES[case][2]:
        assert part in logs, (part, logs[-3000:])
    assert not re.search(r"\bepoch \d", logs)  # no training started
    # No output, partial or complete, and no temporary file from the failing job: the data
    # cases fail on reading the data or in the checkpoint, the batch case in its training job
    # (under runs/).
    failed_job_writes = results / ("runs" if case == "fewer_cells_than_a_batch" else "")
    written_before = PREPROCESSED if case in CHECKPOINT_CASES else set()
    left = [path for path in failed_job_writes.rglob("*") if path.is_file()
            and path.suffix != ".log" and str(path.relative_to(results)) not in written_before]
    assert not left, left


@pytest.mark.workflow
@pytest.mark.slow
def test_a_split_the_checkpoint_did_not_choose_is_refused(data_run):
    # The dataset that gets as far as training holds out T-helper only; its split jobs read the
    # checkpoint's choice instead of checking the cells again.
    workdir, _ = data_run
    results = workdir / "results" / "fewer_cells_than_a_batch"
    result = snakemake(workdir, (workdir / "config.yaml").read_text(),
                       str((results / "splits" / "B" / "train.h5ad").relative_to(workdir)))
    assert result.returncode != 0
    log = (results / "logs" / "split" / "B.log").read_text()
    assert "'B' is not one of the splits chosen in" in log and "add it to `held_out:`" in log
    assert not [path for path in (results / "splits" / "B").rglob("*") if path.is_file()]


class BatchNormShift(MeanShift):
    """A stand-in for a model with BatchNorm layers (not registered)."""

    defaults = {**MeanShift.defaults, "batch_size": 32}
    min_batch_cells = 2


def test_batch_too_small_for_batchnorm_is_refused_with_the_params(small_sim, keys):
    with pytest.raises(ConfigError, match=r"batch_size=1, .* at least 2 cells.*Set `batch_size`"):
        BatchNormShift.check_params({"batch_size": 1}, "config models.x.params")
    with pytest.raises(ConfigError, match="fewer than one training batch needs"):
        BatchNormShift(keys).fit(small_sim[:20], {"batch_size": 32}, seed=0)
    assert BatchNormShift(keys).fit(small_sim[:20], {"batch_size": 2}, seed=0).delta.size


SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def schema_message(config: dict, files=("run.yaml",)) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(config, SCHEMA, list(files))
    return str(caught.value)


@pytest.mark.parametrize("changes, expected", [
    ({"held_out_groups": ["B"]}, "run.yaml: datasets.sim.held_out_groups: unknown key; did you "
                                 "mean `held_out`? Valid keys here: source, condition_key"),
    ({"condition_col": "x"}, "did you mean `condition_key`?"),
    ({"held_out": "B"}, "datasets.sim.held_out: 'B' is a string; expected 'all' or a list of "
                        "strings or a mapping (write a list, e.g. [B])"),
    ({"latent_colors": "donor"}, "datasets.sim.latent_colors: 'donor' is a string; expected a "
                                 "list of strings"),
    ({"held_out": []}, "datasets.sim.held_out: [] should be non-empty"),
    ({"counts": "raw"}, "datasets.sim.counts: 'raw' is a string; expected one of 'X', 'recover' "
                        "or a mapping with key layer"),
    ({"source": {"path": "a.h5ad", "url": "https://x/a.h5ad"}},
     "datasets.sim.source: give exactly one of the keys url, path, simulate (given: url, path)"),
    ({"control": None}, "datasets.sim.control: None is empty (null); expected a string"),
])
def test_schema_error_is_one_short_line_with_the_key_and_the_fix(changes, expected):
    message = schema_message({"datasets": with_dataset(**changes), "models": MODELS})
    assert expected in message
    assert "\n" not in message and len(message) < 300, message
    assert "Failed validating" not in message and "schema" not in message


def test_schema_error_names_the_file_that_sets_the_key(tmp_path):
    first, second = tmp_path / "base.yaml", tmp_path / "override.yaml"
    first.write_text(config_text(with_dataset()))
    second.write_text(yaml.safe_dump({"seeds": [-1]}))
    config = {**yaml.safe_load(first.read_text()), "seeds": [-1]}
    message = schema_message(config, [first, second])
    assert message.startswith(f"{second}: seeds[0]: -1 is less than the minimum of 0"), message
    message = schema_message({**config, "seeds": [0], "seed": 1}, [first, second])
    assert "seed: unknown key; did you mean `seeds`?" in message


@pytest.mark.parametrize("name", ["config.yaml", "kang.yaml", "kang_valid.yaml",
                                  "simulated_independent.yaml"])
def test_validation_fills_the_defaults_snakemake_validate_did(name):
    from snakemake.utils import validate

    config = yaml.safe_load((SCHEMA.parents[2] / "config" / name).read_text())
    ours, snakemakes = copy.deepcopy(config), copy.deepcopy(config)
    validate_config(ours, SCHEMA)
    validate(snakemakes, str(SCHEMA), set_default=True)
    assert ours == snakemakes
    # What the rules read without a default of their own.
    assert {"seeds", "n_top_degs"} <= set(ours)
    for spec in ours["datasets"].values():
        assert {"held_out", "min_cells", "latent_colors", "counts", "qc", "hvg",
                "hide_other_perturbations_of_group"} <= set(spec)
        # Every qc and hvg option, which the preprocessing reads without a default of its own.
        assert set(spec["qc"]) == set(schema_defaults("dataset", "qc"))
        assert set(spec["hvg"]) == set(schema_defaults("dataset", "hvg"))
        if "url" in spec["source"]:
            assert "retries" in spec["source"]
    for entry in ours["models"].values():
        assert {"params", "threads", "gpu", "mem_mb"} <= set(entry)
