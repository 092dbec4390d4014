"""Transferring the responses of similar training groups, on Kang 2018: baselines, scGen and
contrastiveVI.

Every cell type held out in turn, for each of ``--seeds``: the baselines (control, mean_shift,
balanced mean_shift, pca_shift, similarity_shift in gene and PCA space, transport_shift) and scGen
trained once with its shipped training settings, then predicting with each ``delta_groups``
(paired, all, similarity, transport) from the same trained model, decoded and residual
(``prediction``); with ``--deep contrastivevi``, contrastiveVI trained once and predicting with
each ``salient_transfer`` (average, similarity, transport), expected and sampled. Every run is
scored with the
workflow's metrics (``pertflow.benchmark.metrics.score``); the table is written to ``--out`` and summarised
with the workflow's summary (means, 95% intervals, paired differences to the strongest baseline).

    .venv/bin/python bench/transfer_kang.py --seeds 0 1 2 --out results/bench/transfer_kang.csv

``--simulate lineage|independent`` runs the same on the default run's simulation (as
``config/config.yaml`` preprocesses it), with responses shared by lineage or independent per type.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from pertflow.benchmark.metrics import score, top_degs
from pertflow.keys import Keys
from pertflow.models import get_model_class
from pertflow.data.preprocess import preprocess, recover_counts
from pertflow.simulate.experiment import simulate
from pertflow.data.splits import split
from pertflow.benchmark.summary import ALL_GROUPS, summarise
from pertflow.benchmark.verdict import verdict_of
from pertflow.benchmark.verdict_text import as_markdown

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kang2018_scgen_valid.h5ad"
KEYS = Keys(condition="condition", control="control", perturbed="stimulated", group="cell_type")
BASELINES = {
    "control": ("control", {}),
    "mean_shift": ("mean_shift", {}),
    "mean_shift_balanced": ("mean_shift", {"balanced": True}),
    "pca_shift": ("pca_shift", {"n_comps": 100}),
    "similarity_shift": ("similarity_shift", {}),
    "similarity_shift_pca": ("similarity_shift", {"space": "pca"}),
    "transport_shift": ("transport_shift", {}),
}
SCGEN_DELTAS = ("paired", "all", "similarity", "transport")
SALIENT_TRANSFERS = ("average", "similarity", "transport")


class HeldOut:
    """One held-out type's split, DEGs and scoring."""

    def __init__(self, adata: ad.AnnData, group: str):
        parts = split(adata, KEYS, group, hide_other_perturbations=False)
        self.group, self.train, self.control, self.truth = (
            group, parts["train"], parts["control"], parts["truth"])
        self.degs = top_degs(self.truth, self.control, 100)["names"].astype(str).tolist()
        train = self.train
        self.perturbed = np.asarray(
            train[train.obs[KEYS.condition] == KEYS.perturbed].X.mean(0)).ravel()

    def row(self, model: str, seed: int, prediction: ad.AnnData, seconds: float) -> dict:
        metrics = score(prediction, self.truth, self.control, self.degs, self.perturbed, seed)
        transfer = prediction.uns["pertflow"].get("transfer", "")
        print(f"{self.group:<12} {seed} {model:<22} R² top-100 {metrics['r2_mean_top100']:.3f} "
              f"all {metrics['r2_mean_all']:.3f} E {metrics['e_distance']:.3f} {seconds:6.1f} s "
              f"{transfer}", flush=True)
        return {"dataset": "bench", "model": model, "perturbation": KEYS.perturbed,
                "group": self.group, "seed": seed, **metrics, "seconds": seconds}


def baselines(held_out: HeldOut, seed: int) -> list[dict]:
    rows = []
    for name, (cls, params) in BASELINES.items():
        started = time.perf_counter()
        model = get_model_class(cls)(KEYS).fit(held_out.train, params, seed)
        rows.append(held_out.row(name, seed, model.predict(held_out.control),
                                 time.perf_counter() - started))
    return rows


def scgen(held_out: HeldOut, seed: int, epochs: int | None) -> list[dict]:
    """scGen trained once; each delta_groups predicts from the same model. A delta's seconds are
    the training's plus its own choice and prediction."""
    started = time.perf_counter()
    params = {"device": "cpu"} | ({"max_epochs": epochs, "min_epochs": 1} if epochs else {})
    model = get_model_class("scgen")(KEYS).fit(held_out.train, params, seed)
    seconds, rows = time.perf_counter() - started, []
    for delta in SCGEN_DELTAS:
        started = time.perf_counter()
        model.params |= {"delta_groups": delta, "prediction": "decoded"}
        model.set_delta(held_out.train, np.random.default_rng(seed))
        prediction = model.predict(held_out.control)
        rows.append(held_out.row(f"scgen_{delta}", seed, prediction,
                                 seconds + time.perf_counter() - started))
        model.params["prediction"] = "residual"
        rows.append(held_out.row(f"scgen_{delta}_residual", seed,
                                 model.predict(held_out.control),
                                 seconds + time.perf_counter() - started))
    return rows


def contrastivevi(held_out: HeldOut, seed: int, epochs: int | None) -> list[dict]:
    """contrastiveVI trained once; each salient_transfer predicts from the same model."""
    started = time.perf_counter()
    params = {"device": "cpu"} | ({"max_epochs": epochs} if epochs else {})
    model = get_model_class("contrastivevi")(KEYS).fit(held_out.train, params, seed)
    seconds, rows = time.perf_counter() - started, []
    for salient in SALIENT_TRANSFERS:
        started = time.perf_counter()
        model.params["salient_transfer"] = salient
        model.set_salient_shift(held_out.train, np.random.default_rng(seed))
        for prediction in ("expected", "sampled"):
            model.params["prediction"] = prediction
            rows.append(held_out.row(f"contrastivevi_{salient}_{prediction}", seed,
                                     model.predict(held_out.control),
                                     seconds + time.perf_counter() - started))
    return rows


DEEP = {"scgen": scgen, "contrastivevi": contrastivevi}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--simulate", choices=["lineage", "independent"],
                        help="the default run's simulation instead of --data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--groups", nargs="*", help="held-out cell types (default: all)")
    parser.add_argument("--deep", nargs="*", choices=list(DEEP), default=["scgen"],
                        help="deep models after the baselines (none: baselines only)")
    parser.add_argument("--epochs", type=int, help="deep models' max_epochs (default: theirs)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="results/bench/transfer_kang.csv")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.simulate:
        args.data = f"simulation, response_sharing: {args.simulate}"
        adata = preprocess(simulate(n_cells=3000, n_genes=1000, n_cell_types=6, seed=0,
                                    response_sharing=args.simulate),
                           qc={"min_genes": 200, "min_cells_per_gene": 3, "max_mito_fraction": 0.2},
                           hvg={"n_top_genes": 800, "flavor": "seurat_v3"})
    else:
        adata = ad.read_h5ad(args.data)
        adata.layers["counts"] = recover_counts(adata.X)  # as `counts: recover` in the workflow
    print(f"{args.data}: {adata.n_obs} cells × {adata.n_vars} genes; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    held_out = [HeldOut(adata, group)
                for group in args.groups or sorted(adata.obs[KEYS.group].unique())]
    # Baselines first (seconds), then each deep model seed by seed over every type; the table
    # is rewritten after every step, so a long run can be read early.
    steps = [(baselines, h, seed) for seed in args.seeds for h in held_out]
    steps += [(DEEP[name], h, seed) for name in args.deep for seed in args.seeds for h in held_out]
    rows = []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for run, h, seed in steps:
        rows += run(h, seed) if run is baselines else run(h, seed, args.epochs)
        table = pd.DataFrame(rows)
        table.to_csv(args.out, index=False)

    summary = summarise(table)
    headline = ["r2_mean_top100", "r2_mean_all", "e_distance"]
    pooled = summary[(summary["group"] == ALL_GROUPS) & summary["metric"].isin(headline)]
    print("\n== means over held-out types and seeds (95% t-interval) ==")
    print(pooled.pivot(index="model", columns="metric", values=["mean", "ci_low", "ci_high"])
          .round(3).to_string())
    per_type = table.groupby(["group", "model"])[headline].mean().unstack("model")
    print("\n== per held-out type, mean over seeds ==")
    for metric in headline:
        print(f"\n{metric}\n{per_type[metric].round(3).to_string()}")
    print()
    print(as_markdown(verdict_of(args.data, table, list(BASELINES))))
    print(f"seconds per fit (mean): {table.groupby('model')['seconds'].mean().round(1).to_dict()}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
