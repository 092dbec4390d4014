"""The real-data download path (Kang 2018 from ../shared/data served over HTTP, skipped without
it) with every cell type. Every figure of config/kang_valid.yaml is test_kang_figures.py's: a
module of its own, so that pytest-xdist runs the two long tests on different workers."""

from __future__ import annotations

import http.server
import threading
from functools import partial

import pandas as pd
import pytest
import yaml

from conftest import ROOT, run

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


@pytest.fixture
def kang_url(kang_path):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(kang_path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{kang_path.name}"
    server.shutdown()


def test_kang_downloaded_over_http_with_all_seven_types(tmp_path, kang_url):
    config = yaml.safe_load((ROOT / "config" / "kang_valid.yaml").read_text())
    config["datasets"]["kang_valid"]["source"] = {
        "url": kang_url,
        "sha256": "83f89f5356a4c01f65bbcee225eb45d8d8b13b6c962724431a26c1bf568ff09e",
    }
    # Two seeds of the baseline that samples (its cell-type balancing) and of control.
    config["models"] = {name: entry for name, entry in config["models"].items()
                        if name in ("control", "mean_shift_balanced")}
    config["seeds"] = [0, 1]
    run(tmp_path, config, "results/kang_valid/metrics_summary.csv")  # tables; figures: below
    results = tmp_path / "results" / "kang_valid"
    assert "83f89f5356a4c01f" in (results / "logs" / "download.log").read_text()
    metrics = pd.read_csv(results / "metrics.csv").set_index(["model", "group"])
    assert sorted(metrics.index.unique("group")) == sorted(
        ["CD4T", "CD14+Mono", "B", "CD8T", "NK", "FCGR3A+Mono", "Dendritic"])
    top100 = metrics["r2_mean_top100"].groupby(["model", "group"]).mean()
    assert top100["mean_shift_balanced", "CD4T"] > top100["control", "CD4T"]
    summary = pd.read_csv(results / "metrics_summary.csv").set_index(["model", "group", "metric"])
    balanced = summary.loc["mean_shift_balanced", "CD4T", "r2_mean_top100"]
    assert balanced["n"] == 2 and balanced["ci_low"] < balanced["mean"] < balanced["ci_high"]
