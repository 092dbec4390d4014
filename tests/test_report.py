"""The report's front page: each dataset's verdict, read back from the HTML Snakemake writes.

No model is trained: a finished results tree is made by hand (empty stand-ins for every file the
report does not read, real run metrics and predictions carrying transfer choices), the rules that
build the verdict run on it, and `snakemake --report` renders the page."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from pertflow.benchmark.metrics import METRICS, VERDICT_METRICS
from pertflow.benchmark.summary import comparisons
from pertflow.benchmark.verdict import verdict_of
from pertflow.benchmark.verdict_text import difference_cell

pytestmark = pytest.mark.workflow
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "1"]
GROUPS = ["CD4T", "NK"]
SEEDS = [0, 1]
# By model, per run (held-out group × seed, in that order): the value of every metric, negated for
# the lower-is-better ones, so that a larger number is better everywhere.
VALUES = {"control": [0.1, 0.1, 0.2, 0.1], "mean_shift": [0.5, 0.6, 0.4, 0.5],
          "scgen": [0.7, 0.9, 0.6, 0.8]}
# scGen transfers on dataset "pbmc" (with these weights over the training groups); nothing does
# on "other".
WEIGHTS = {"CD4T": {"CD8T": 0.6, "NK": 0.35, "B": 0.05},
           "NK": {"CD8T": 0.7, "CD4T": 0.2, "B": 0.1}}


def snakemake(workdir: Path, *args: str) -> str:
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--configfile",
                             str(workdir / "config.yaml"), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


def settle(results: Path) -> None:
    """Every file one age, so that no job looks out of date because of the order of creation."""
    when = time.time() - 60
    for path in results.rglob("*"):
        os.utime(path, (when, when))


def fill_results_tree(workdir: Path) -> None:
    """Empty stand-ins for every output of the workflow (directories for outputs without a
    suffix), made in rounds: the held-out groups are known once the checkpoint's file exists."""
    for _ in range(3):
        rows = [line.split("\t") for line in snakemake(workdir, "--summary").splitlines()[1:]]
        missing = [Path(workdir, row[0]) for row in rows if row[4] == "missing"]
        if not missing:
            return
        for path in missing:
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:
                path.mkdir(parents=True, exist_ok=True)
        settle(workdir / "results")
    raise AssertionError("the results tree did not settle")


def write_run(run: Path, dataset: str, model: str, group: str, seed: int, value: float) -> None:
    metrics = {"dataset": dataset, "model": model, "perturbation": "stimulated", "group": group,
               "seed": seed, "n_pred": 10, "n_truth": 12}
    metrics |= {m: value if better == "higher" else -value for m, better in METRICS.items()}
    (run / "metrics.json").write_text(json.dumps(metrics))
    prediction = ad.AnnData(np.zeros((2, 3), dtype=np.float32))
    prediction.uns["pertflow"] = {"model": model, "seed": seed}
    if dataset == "pbmc" and model == "scgen":
        prediction.uns["pertflow"]["transfer"] = json.dumps(
            {"method": "similarity", "space": "latent", "tau": 0.1 if seed == 0 else None,
             "alpha": 0.8, "inner_score": 0.93, "weights": WEIGHTS[group]})
    prediction.write_h5ad(run / "prediction.h5ad")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("report")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    dataset = config["datasets"]["simulated"]
    config["datasets"] = {"pbmc": dataset, "other": dataset}
    config["models"] = {model: {} for model in VALUES}
    config["seeds"] = SEEDS
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in config["datasets"]:
        (workdir / "results" / name).mkdir(parents=True)
        (workdir / "results" / name / "held_out_groups.json").write_text(
            json.dumps({"splits": GROUPS}))
    fill_results_tree(workdir)
    for name in config["datasets"]:
        for model, values in VALUES.items():
            runs = [(g, s) for g in GROUPS for s in SEEDS]
            for (group, seed), value in zip(runs, values, strict=True):
                run = workdir / "results" / name / "runs" / model / group / f"seed{seed}"
                write_run(run, name, model, group, seed, value)
    settle(workdir / "results")
    targets = [f"results/{name}/{file}" for name in config["datasets"]
               for file in ("verdict.rst", "transfer.csv")]
    snakemake(workdir, "--forcerun", "aggregate_metrics", "collect_transfer", "summarise",
              "--", *targets)
    snakemake(workdir, "--report", str(workdir / "report.html"))
    page = (workdir / "report.html").read_text()
    return {"workdir": workdir, "page": page, "description": workflow_description(page)}


def workflow_description(page: str) -> str:
    """The front page's description: Snakemake embeds it as a JSON string of HTML."""
    match = re.search(r"var workflow_desc = (.*);\n", page)
    assert match, "no workflow description in the report"
    return json.loads(match.group(1))


class Text(HTMLParser):
    """The visible text of an HTML fragment, whitespace collapsed (style blocks left out)."""

    def __init__(self):
        super().__init__()
        self.parts, self.skip = [], False

    def handle_starttag(self, tag, attrs):
        self.skip = tag == "style"

    def handle_endtag(self, tag):
        self.skip = False

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def text_of(fragment: str) -> str:
    parser = Text()
    parser.feed(fragment)
    return " ".join(" ".join(parser.parts).split())


def metrics_table(workdir: Path, dataset: str) -> pd.DataFrame:
    return pd.read_csv(workdir / "results" / dataset / "metrics.csv", dtype={"group": str})


def test_front_page_names_the_winner_of_every_metric_and_the_margin(report):
    description = report["description"]
    assert "system-message" not in description, description  # docutils complained
    text = text_of(description)
    assert "Leave-one-group-out benchmark: the verdict" in text
    # pbmc first, as in the config, and each dataset's own verdict
    assert 0 < text.index("Dataset pbmc") < text.index("Dataset other")
    table = metrics_table(report["workdir"], "pbmc")
    compared = comparisons(table, ["control", "mean_shift"]).set_index(["metric", "model"])
    results = {r.metric: r for r in verdict_of("pbmc", table, ["control", "mean_shift"])
               .sections[0].metrics}
    for metric in VERDICT_METRICS:  # the verdict judges the unbiased E-distance alone
        better = METRICS[metric]
        row = compared.loc[(metric, "scgen")]
        assert row["is_winner"] and row["best_baseline"] == "mean_shift"
        arrow = "↑" if better == "higher" else "↓"
        mean = f"{row['mean']:.3g}"
        difference = difference_cell(results[metric].differences["scgen"]).strip("*")
        assert f"{metric} {arrow} scgen {mean} 2 of 2 mean_shift" in text, metric
        assert difference in text, (metric, difference)
    # r2_mean_top100: scGen 0.75 against mean shift's 0.5, paired over 4 runs
    assert "r2_mean_top100 ↑ scgen 0.75 2 of 2 mean_shift 0.5 +0.25 [" in text
    n = len(VERDICT_METRICS)
    assert f"scgen is better than the strongest baseline on {n} of {n} metrics" in text


def test_front_page_shows_the_transfer_choices(report):
    text = text_of(report["description"])
    pbmc, other = text.split("Dataset other")
    assert "similarity in latent, τ 0.1; similarity in latent, τ none (plain average)" in pbmc
    assert "scgen CD4T" in pbmc and "CD8T 0.60, NK 0.35, B 0.05" in pbmc
    assert "CD8T 0.70, CD4T 0.20, B 0.10" in pbmc
    assert "No model of this dataset transfers the responses of the training groups." in other


def test_transfer_table_and_summary_of_the_tree(report):
    results = report["workdir"] / "results"
    transfer = pd.read_csv(results / "pbmc" / "transfer.csv", dtype={"group": str})
    assert len(transfer) == len(GROUPS) * len(SEEDS) and set(transfer["model"]) == {"scgen"}
    first = transfer.iloc[0]
    assert (first["group"], first["seed"], first["method"], first["tau"]) == \
        ("CD4T", 0, "similarity", 0.1)
    assert first["weights"] == "CD8T 0.60, NK 0.35, B 0.05" and first["weight_NK"] == 0.35
    assert first["inner_score"] == 0.93
    assert pd.isna(transfer.iloc[1]["tau"])
    empty = (results / "other" / "transfer.csv").read_text()
    assert empty.strip() == "model,perturbation,group,seed,method,space,tau,k,alpha,weights"
    summary = (results / "pbmc" / "summary.md").read_text()
    assert "## Transfer between groups" in summary
    assert "held out NK" in summary and "CD8T 0.70, CD4T 0.20, B 0.10" in summary
    # the report lists the new table among the metrics
    assert "transfer.csv" in html.unescape(report["page"])
