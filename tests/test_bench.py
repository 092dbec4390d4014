"""Every bench script still starts: ``python bench/X.py --help`` exits 0 and prints its usage.

The benchmarks themselves take minutes to hours and are not run here (bench/README.md), but a
renamed or removed library function they import would otherwise go unnoticed until someone runs
them. The scripts are globbed, so a new one is covered without touching this file."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

BENCH_SCRIPTS = sorted((ROOT / "bench").glob("*.py"))


def test_bench_scripts_are_found():
    assert BENCH_SCRIPTS, "no bench/*.py found"


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=lambda path: path.name)
def test_bench_script_help(script):
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{script.name} --help exited {done.returncode}:\n{done.stderr}"
    assert "usage" in done.stdout.lower(), f"{script.name} --help printed no usage:\n{done.stdout}"
