"""Benchmark our scGen against the reference (theislab/scgen 2.1 on scvi-tools) on Kang 2018.

Part 1, speed and accuracy at identical settings: CD4T held out, batch 32, a fixed number of epochs
with no early stopping, for each of ``--seeds``. Trains ours, then (when ``import scgen`` works in
this environment) the reference in the same run; prints seconds per epoch of both, their ratio,
both models' R² (all genes / top-100 DEGs) per seed and averaged, and our peak RSS. The reference
trains in a fresh child process each seed, with glibc's default allocator as users run it;
``--reference-reuse-memory`` gives it the allocator settings our models use (see
``pertflow.models.torch_utils.reuse_freed_memory``), to show how much of the ratio they explain.

Part 2, the shipped defaults: every cell type held out in turn, our scGen with its default
parameters (and the same trained model with the reference's delta) beside the mean_shift and
pca_shift baselines, with training seconds.

    python bench/scgen_vs_reference.py                      # both parts
    bench/.venv-reference/bin/python bench/scgen_vs_reference.py --part speed   # with reference

See bench/README.md for the reference environment. Timings are wall-clock on whatever else the
machine is running; the load average is printed so a noisy run is recognisable.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]

from pertflow.benchmark.metrics import r2_mean, top_degs
from pertflow.keys import Keys
from pertflow.models import get_model_class
from pertflow.data.splits import split as leave_one_out
from pertflow.models.torch_utils import reuse_freed_memory
from pertflow.utils import dense

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kang2018_scgen_valid.h5ad"
KEYS = Keys(condition="condition", control="control", perturbed="stimulated", group="cell_type")


def split(adata: ad.AnnData, group: str) -> tuple[ad.AnnData, ad.AnnData, ad.AnnData]:
    """The workflow's split (``pertflow.data.splits.split``): training cells, the group's controls,
    its perturbed cells."""
    parts = leave_one_out(adata, KEYS, group, hide_other_perturbations=False)
    return parts["train"], parts["control"], parts["truth"]


class Scorer:
    """R² of mean expression, all genes and the top-100 Wilcoxon DEGs of truth vs control."""

    def __init__(self, control: ad.AnnData, truth: ad.AnnData):
        self.genes = truth.var_names
        self.top = self.genes.get_indexer(top_degs(truth, control, 100)["names"].tolist())
        self.truth = dense(truth.X).astype(np.float64)

    def __call__(self, pred: ad.AnnData) -> tuple[float, float]:
        P = dense(pred[:, self.genes].X).astype(np.float64)
        return r2_mean(P, self.truth), r2_mean(P[:, self.top], self.truth[:, self.top])


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB


def train_ours(train: ad.AnnData, params: dict, seed: int = 0):
    started = time.perf_counter()
    model = get_model_class("scgen")(KEYS).fit(train, params, seed)
    return model, time.perf_counter() - started


def train_reference(train: ad.AnnData, control: ad.AnnData, epochs: int, batch_size: int,
                    seed: int = 0) -> tuple[ad.AnnData, float]:
    import scgen
    import scvi

    scvi.settings.seed = seed
    scvi.settings.progress_bar_style = "tqdm"  # plain bar on stderr
    train = train.copy()
    scgen.SCGEN.setup_anndata(train, batch_key=KEYS.condition, labels_key=KEYS.group)
    model = scgen.SCGEN(train)
    started = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=batch_size, early_stopping=False, use_gpu=False)
    seconds = time.perf_counter() - started
    pred, _ = model.predict(ctrl_key=KEYS.control, stim_key=KEYS.perturbed,
                            adata_to_predict=control)
    return pred, seconds


def reference_in_child(data: str, group: str, epochs: int, batch_size: int, seed: int,
                       threads: int, reuse_memory: bool) -> tuple[np.ndarray, list[str], float]:
    """Runs in a spawned process: the reference's predicted expression, its genes, seconds."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    if reuse_memory:
        reuse_freed_memory()
    train, control, _ = split(ad.read_h5ad(data), group)
    pred, seconds = train_reference(train, control, epochs, batch_size, seed)
    return dense(pred.X).astype(np.float64), list(pred.var_names), seconds


def describe(per_epoch: float, r2_all: float, r2_top: float) -> str:
    return f"{per_epoch:6.2f} s/epoch  R² all {r2_all:.4f}  top-100 {r2_top:.4f}"


def speed(adata: ad.AnnData, data: str, group: str, epochs: int, batch_size: int,
          seeds: list[int], reference: bool, reference_reuse_memory: bool) -> None:
    """Ours and the reference at identical settings, one line per seed and model. R² at a fixed
    epoch varies a lot between seeds (bench/README.md), so compare the means over several seeds,
    not one run."""
    train, control, truth = split(adata, group)
    score = Scorer(control, truth)
    print(f"\n== speed and accuracy: {group} held out, batch {batch_size}, {epochs} epochs, "
          f"no early stopping, {torch.get_num_threads()} torch threads, seeds {seeds} ==")
    params = {"batch_size": batch_size, "max_epochs": epochs, "patience": None,
              "lr_schedule": "constant", "restore_best": False, "stop_on": "validation_loss",
              "delta_groups": "all", "device": "cpu"}  # the reference's training and arithmetic
    results = {"ours": []}
    for seed in seeds:
        model, seconds = train_ours(train, params, seed)
        results["ours"].append((seconds / epochs, *score(model.predict(control))))
        print(f"ours      seed {seed}: " + describe(*results["ours"][-1]), flush=True)
    print(f"ours: peak RSS {peak_rss_gb():.2f} GB")
    if reference:
        try:
            import scgen  # noqa: F401
        except ImportError as error:
            print(f"reference: not importable here ({error}); see bench/README.md")
            reference = False
    if reference:
        results["reference"] = []
        allocator = "our allocator settings" if reference_reuse_memory else "default allocator"
        spawn = multiprocessing.get_context("spawn")
        for seed in seeds:
            with ProcessPoolExecutor(1, mp_context=spawn) as child:
                X, genes, seconds = child.submit(
                    reference_in_child, data, group, epochs, batch_size, seed,
                    torch.get_num_threads(), reference_reuse_memory).result()
            pred = ad.AnnData(X, var=pd.DataFrame(index=genes))
            results["reference"].append((seconds / epochs, *score(pred)))
            print(f"reference seed {seed}: " + describe(*results["reference"][-1])
                  + f" ({allocator})", flush=True)
    means = {name: np.mean(rows, axis=0) for name, rows in results.items()}
    for name, mean in means.items():
        spread = np.std([row[2] for row in results[name]])
        print(f"{name:<9} mean:   {describe(*mean)} (sd {spread:.4f} over {len(seeds)} seeds)")
    if "reference" in means:
        print(f"ratio ours/reference: {means['ours'][0] / means['reference'][0]:.2f}× the time "
              f"per epoch; ΔR² top-100 {means['ours'][2] - means['reference'][2]:+.4f}")


def predict_with_reference_delta(model, train: ad.AnnData, control: ad.AnnData) -> ad.AnnData:
    """The same trained scGen, predicting as the reference does (``delta_groups: all``,
    ``prediction: decoded``); the model's own settings are restored after."""
    own = dict(model.params)
    model.params |= {"delta_groups": "all", "prediction": "decoded"}
    model.set_delta(train, np.random.default_rng(0))
    prediction = model.predict(control)
    model.params = own
    model.set_delta(train, np.random.default_rng(model.seed))
    return prediction


def defaults(adata: ad.AnnData, groups: list[str], seeds: list[int]) -> None:
    print(f"\n== shipped defaults, every cell type held out, seeds {seeds}; 'delta all': the "
          "same model with the reference's delta ==")
    baselines = {"mean_shift": ("mean_shift", {}),
                 "mean_shift_bal": ("mean_shift", {"balanced": True}),
                 "pca_shift": ("pca_shift", {})}
    header = f"{'held out':<12} {'seed':>4} {'scgen all/top100':>17} {'delta all':>15} {'s':>6} "
    header += f"{'epochs':>6} {'kept':>4}"
    header += "".join(f" {name + ' all/top100':>25}" for name in baselines)
    print(header)
    for group in groups:
        train, control, truth = split(adata, group)
        score = Scorer(control, truth)
        runs = []  # per seed: scgen all, top-100, delta all all, top-100, seconds
        for seed in seeds:
            model, seconds = train_ours(train, {}, seed)
            runs.append((*score(model.predict(control)),
                         *score(predict_with_reference_delta(model, train, control)), seconds))
            line = f"{group:<12} {seed:4d} {'%.3f / %.3f' % runs[-1][:2]:>17} "
            line += f"{'%.3f / %.3f' % runs[-1][2:4]:>15} "
            line += f"{seconds:6.1f} {len(model.history):6d} {model.kept_epoch:4d}"
            for name, params in baselines.values():
                baseline = get_model_class(name)(KEYS).fit(train, params, seed)
                line += f" {'%.3f / %.3f' % score(baseline.predict(control)):>25}"
            print(line, flush=True)
        if len(runs) > 1:  # single runs swing by a few hundredths between seeds
            mean, spread = np.mean(runs, axis=0), np.std(np.array(runs)[:, 1])
            print(f"{group:<12} mean {'%.3f / %.3f' % tuple(mean[:2]):>17} "
                  f"{'%.3f / %.3f' % tuple(mean[2:4]):>15} {mean[4]:6.1f}  "
                  f"(scgen top-100 sd {spread:.3f} over {len(runs)} seeds)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--part", choices=["speed", "defaults", "all"], default="all")
    parser.add_argument("--group", default="CD4T", help="held-out cell type for the speed part")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds for both parts (R² varies between seeds)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference model")
    parser.add_argument("--reference-reuse-memory", action="store_true",
                        help="train the reference with our allocator settings too")
    parser.add_argument("--groups", nargs="*", help="cell types for the defaults part (all)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    adata = ad.read_h5ad(args.data)
    print(f"{args.data}: {adata.n_obs} cells × {adata.n_vars} genes; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.part in ("speed", "all"):
        speed(adata, args.data, args.group, args.epochs, args.batch_size, args.seeds,
              not args.no_reference, args.reference_reuse_memory)
    if args.part in ("defaults", "all"):
        groups = args.groups or sorted(adata.obs[KEYS.group].unique())
        defaults(adata, groups, args.seeds)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
