"""Two runs of the same config on CPU give byte-identical metrics, and every run records its seed
and the versions that produced it. The tiny config and its first run (conftest's ``reference``) are
shared with test_resume."""

from __future__ import annotations

import json

import anndata as ad
import pytest

from conftest import GROUP, TINY_METRICS, run_tiny

pytestmark = [pytest.mark.workflow, pytest.mark.slow]
VERSIONS = ["python", "numpy", "scanpy", "anndata", "torch", "pertflow"]


def test_two_runs_give_byte_identical_metrics(reference, tmp_path):
    again = run_tiny(tmp_path)
    assert (again / TINY_METRICS).read_bytes() == (reference / TINY_METRICS).read_bytes()


def test_runs_record_seed_and_versions(reference):
    run = reference / "results" / "sim" / "runs" / "scgen" / GROUP / "seed0"
    saved = json.loads((run / "model" / "model.json").read_text())
    recorded = ad.read_h5ad(run / "prediction.h5ad").uns["pertflow"]
    for meta in (saved, recorded):
        assert meta["seed"] == 0 and meta["model"] == "scgen"
        assert set(VERSIONS) <= meta["versions"].keys()
    assert json.loads(recorded["params"]) == saved["params"]
    baseline = ad.read_h5ad(reference / "results" / "sim" / "runs" / "mean_shift" / GROUP / "seed0"
                            / "prediction.h5ad").uns["pertflow"]
    assert "torch" not in baseline["versions"]  # recorded only where the run imports it
