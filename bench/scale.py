"""Peak memory and time of the workflow's stages as the cell count grows.

Simulates 10k, 30k and 100k cells × 2000 genes (sparse counts) and takes each through the steps
the workflow's jobs run: simulate, preprocess (standardise, QC, normalise, HVG), split (choose the
held-out groups, write one group's split and its DEGs) and the baselines mean_shift and pca_shift
(fit, save, reload, predict, write). Each stage runs in a fresh subprocess, as a Snakemake job
does, and reports its own peak RSS (the kernel's high-water mark) and seconds, imports excluded;
files pass between stages through h5ad, as in the workflow. The dataset settings are the default
config's (`config/config.yaml`); `--n-top-genes` overrides its HVG count (0 keeps every gene).

    .venv/bin/python bench/scale.py                      # 10k, 30k, 100k cells
    .venv/bin/python bench/scale.py --cells 10000 --n-top-genes 0
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["simulate", "preprocess", "split", "mean_shift", "pca_shift"]


def dataset_spec(n_top_genes: int | None) -> tuple[str, dict]:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    name, spec = next(iter(config["datasets"].items()))
    if n_top_genes is not None:
        spec["hvg"] = {**spec.get("hvg", {}), "n_top_genes": n_top_genes or None}
    return name, spec


def run_stage(stage: str, workdir: Path, n_cells: int, n_genes: int,
              n_top_genes: int | None) -> None:
    """One stage, in this process; mirrors the workflow's script for it."""
    import anndata as ad

    from pertflow.keys import dataset_keys
    from pertflow.data.io import read_h5ad, standardise
    from pertflow.benchmark.metrics import top_degs
    from pertflow.models import get_model_class
    from pertflow.data.preprocess import preprocess
    from pertflow.simulate.experiment import simulate
    from pertflow.data.splits import choose_held_out, split
    from pertflow.utils import write_h5ad

    name, spec = dataset_spec(n_top_genes)
    keys = dataset_keys(spec)
    split_dir = workdir / "split"
    started = time.perf_counter()
    if stage == "simulate":
        simulate_params = {**spec["source"]["simulate"], "n_cells": n_cells, "n_genes": n_genes}
        write_h5ad(simulate(**simulate_params), workdir / "simulated.h5ad")
    elif stage == "preprocess":
        adata = standardise(read_h5ad(workdir / "simulated.h5ad"), spec, name)
        write_h5ad(preprocess(adata, qc=spec.get("qc"), hvg=spec.get("hvg")),
                   workdir / "preprocessed.h5ad")
    elif stage == "split":
        adata = ad.read_h5ad(workdir / "preprocessed.h5ad")
        group = choose_held_out(adata, keys, [keys.perturbed], spec["held_out"],
                                spec["min_cells"], name)[0].group
        parts = split(adata, keys, group, hide_other_perturbations=False)
        for part, cells in parts.items():
            write_h5ad(cells, split_dir / f"{part}.h5ad")
        top_degs(parts["truth"], parts["control"]).to_csv(split_dir / "degs.csv", index=False)
    else:
        cls = get_model_class(stage)
        model = cls(keys).fit(ad.read_h5ad(split_dir / "train.h5ad"), None, seed=0)
        model.save(workdir / stage)
        prediction = cls.load(workdir / stage).predict(ad.read_h5ad(split_dir / "control.h5ad"))
        write_h5ad(prediction, workdir / f"{stage}.h5ad")
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    print(json.dumps({"seconds": seconds, "peak_rss_gb": peak_gb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 30_000, 100_000],
                        help="cell counts to simulate, one run of every stage each "
                             "(default: 10000 30000 100000)")
    parser.add_argument("--genes", type=int, default=2000, help="genes simulated (default: 2000)")
    parser.add_argument("--n-top-genes", type=int, default=None,
                        help="HVGs to keep (0: all genes); default: the config's")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the stages' files go (default: a temporary directory)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # a child's stage
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage, args.workdir, args.cells[0], args.genes, args.n_top_genes)
        return

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{'cells':>8} {'stage':>11} {'seconds':>9} {'peak RSS GB':>12}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n_cells in args.cells:
            workdir = Path(tmp) / str(n_cells)
            for stage in STAGES:
                command = [sys.executable, __file__, "--stage", stage, "--workdir", str(workdir),
                           "--cells", str(n_cells), "--genes", str(args.genes)]
                if args.n_top_genes is not None:
                    command += ["--n-top-genes", str(args.n_top_genes)]
                child = subprocess.run(command, capture_output=True, text=True)
                if child.returncode != 0:
                    sys.exit(f"{stage} at {n_cells} cells failed:\n{child.stderr[-3000:]}")
                result = json.loads(child.stdout.strip().splitlines()[-1])
                print(f"{n_cells:>8} {stage:>11} {result['seconds']:>9.1f} "
                      f"{result['peak_rss_gb']:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
