"""Adding a model is one module and one config entry: the README's example model, kept outside the
package (tests/plugins/scaled_shift.py), goes through the whole workflow."""

from __future__ import annotations

import copy
import os
import subprocess

import pandas as pd
import pytest
import yaml

from conftest import GROUP, ROOT, SNAKEMAKE, TINY_CONFIG

pytestmark = [pytest.mark.workflow, pytest.mark.slow]
PLUGINS = ROOT / "tests" / "plugins"


def test_a_model_of_ones_own_runs_through_the_whole_workflow(tmp_path):
    config = copy.deepcopy(TINY_CONFIG)
    config["models"] = {"control": {}, "scaled_shift": {"module": "scaled_shift"},
                        "scaled_shift_half": {"model": "scaled_shift", "module": "scaled_shift",
                                             "params": {"scale": 0.5}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(PLUGINS), os.environ.get("PYTHONPATH")) if p)}
    options = ["--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")]
    # Training, prediction, scoring, the summary and the model's own figures (the figures of every
    # model together are the default workflow test's); targets go before --configfile.
    targets = ["results/sim/summary.md", "results/sim/figures/mean_scatter/scaled_shift"]
    result = subprocess.run([*SNAKEMAKE, *targets, *options], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr[-5000:]

    metrics = pd.read_csv(tmp_path / "results" / "sim" / "metrics.csv")
    assert sorted(metrics["model"].unique()) == ["control", "scaled_shift", "scaled_shift_half"]
    assert set(metrics["group"]) == {GROUP}
    scores = metrics.set_index("model")["r2_mean_top100"]
    # The shift learns the stimulation: better than predicting no change on the top DEGs.
    assert scores["scaled_shift"] > scores["control"] + 0.1
    assert scores["scaled_shift"] != scores["scaled_shift_half"]  # its param reached it
    summary = (tmp_path / "results" / "sim" / "summary.md").read_text()
    assert "scaled_shift" in summary
    for kind in ("mean_scatter", "variance_scatter", "umap"):
        assert (tmp_path / "results" / "sim" / "figures" / kind / "scaled_shift"
                / f"{GROUP}.png").exists()

    # A misspelt param of the plugin fails at parse time, like the built-in models'.
    config["models"]["scaled_shift"]["params"] = {"scal": 0.5}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([*SNAKEMAKE, "-n", *options], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "unknown parameter(s) ['scal']" in result.stdout + result.stderr
