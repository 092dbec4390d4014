"""Benchmark: the scGPT-style transformer on Kang et al. 2018, cell types held out in turn.

For each held-out type the models train on every other cell (the type's perturbed cells are the
truth) and predict its control cells under stimulation. Prints, per type and model, the metrics
of ``pertflow.benchmark.metrics.score`` that show a collapse to the mean — R² of per-gene means and of
per-gene variances (top-100 Wilcoxon DEGs / all genes), the E-distance in a PCA of truth and
control — and the median per-gene SD of the predicted cells beside the true cells' and the
controls'; then the fit and predict seconds, the peak RSS, and how correlated the predicted deltas
of different held-out types are, next to the same figure for the true deltas.

A model is given as ``[label=]name[:json params]``; a name ``transformer@REV`` is the transformer
as of git revision REV (read with ``git show``, never written to the work tree), to compare before
and after a change:

    .venv/bin/python bench/transformer_kang.py --groups CD4T B \\
        --models similarity_shift transformer@HEAD transformer \\
                 'transformer_e8=transformer:{"epochs": 8}'
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import resource
import subprocess
import tempfile
import time
from itertools import combinations
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]

from pertflow.benchmark.metrics import score, top_degs
from pertflow.keys import Keys
from pertflow.models import get_model_class
from pertflow.data.splits import split
from pertflow.utils import dense

KANG = ROOT.parent / "shared" / "data" / "kang2018_scgen_valid.h5ad"
KEYS = Keys(condition="condition", control="control", perturbed="stimulated", group="cell_type")
COLUMNS = {"r2_mean_top100": "R² mean top100", "r2_mean_all": "R² mean all",
           "r2_var_top100": "R² var top100", "r2_var_all": "R² var all",
           "e_distance": "E-dist", "sd_pred": "SD pred", "sd_truth": "SD truth",
           "fit_s": "fit s", "predict_s": "predict s"}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def transformer_at(rev: str) -> type:
    """The transformer class of git revision ``rev``, registered as ``transformer@rev``."""
    source = subprocess.run(["git", "show", f"{rev}:lib/pertflow/models/transformer.py"],
                            cwd=ROOT, check=True, capture_output=True, text=True).stdout
    source = source.replace('@register("transformer")', f'@register("transformer@{rev}")')
    path = Path(tempfile.mkdtemp()) / f"transformer_{rev.replace('/', '_')}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return get_model_class(f"transformer@{rev}")


def parse_model(spec: str) -> tuple[str, type, dict]:
    """``[label=]name[:json]`` → (label, class, params)."""
    label, rest = spec.split("=", 1) if "=" in spec.split(":", 1)[0] else ("", spec)
    name, _, params = rest.partition(":")
    cls = transformer_at(name.split("@", 1)[1]) if "@" in name else get_model_class(name)
    return label or name, cls, json.loads(params) if params else {}


def median_sd(X: np.ndarray) -> float:
    return float(np.median(X.std(axis=0)))


def mean_pairwise_correlation(deltas: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """Mean, min and max Pearson correlation between the deltas of every pair of types."""
    r = [np.corrcoef(deltas[a], deltas[b])[0, 1] for a, b in combinations(sorted(deltas), 2)]
    return float(np.mean(r)), float(np.min(r)), float(np.max(r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=KANG)
    parser.add_argument("--groups", nargs="*", help="cell types to hold out (default: all)")
    parser.add_argument("--models", nargs="*", default=["similarity_shift", "transformer"],
                        help="[label=]name[:json params]; name transformer@REV for a git revision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--csv", type=Path, help="also write the per-type table here")
    parser.add_argument("--verbose", action="store_true", help="log per-epoch losses")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    adata = ad.read_h5ad(args.data)
    groups = args.groups or list(adata.obs[KEYS.group].cat.categories)
    models = [parse_model(spec) for spec in args.models]
    print(f"{args.data.name}: {adata.n_obs} cells x {adata.n_vars} genes; holding out {groups}; "
          f"seed {args.seed}, {args.threads} torch thread(s)")
    for label, cls, params in models:
        print(f"  {label}: {cls.name} {params or ''}")

    rows, pred_delta, true_delta = [], {label: {} for label, _, _ in models}, {}
    for group in groups:
        parts = split(adata, KEYS, group, hide_other_perturbations=False)
        truth, control = dense(parts["truth"].X), dense(parts["control"].X)
        degs = top_degs(parts["truth"], parts["control"])["names"].tolist()
        train = parts["train"]
        reference = dense(train[(train.obs[KEYS.condition] == KEYS.perturbed).to_numpy()].X)
        true_delta[group] = truth.mean(axis=0) - control.mean(axis=0)
        print(f"{group}: {control.shape[0]} controls, {truth.shape[0]} truth; median per-gene SD "
              f"truth {median_sd(truth):.3f}, controls {median_sd(control):.3f}", flush=True)
        for label, cls, params in models:
            start = time.perf_counter()
            model = cls(KEYS).fit(train, params, seed=args.seed)
            fit_s = time.perf_counter() - start
            start = time.perf_counter()
            pred = model.predict(parts["control"])
            predict_s = time.perf_counter() - start
            P = dense(pred.X)
            pred_delta[label][group] = P.mean(axis=0) - control.mean(axis=0)
            s = score(pred, parts["truth"], parts["control"], degs, reference.mean(axis=0),
                      args.seed)
            rows.append({"group": group, "model": label, **{m: s[m] for m in COLUMNS if m in s},
                         "sd_pred": median_sd(P), "sd_truth": median_sd(truth),
                         "fit_s": fit_s, "predict_s": predict_s})
            print(f"{group:>12} {label:>18}: R² mean top100 {s['r2_mean_top100']:.3f} all "
                  f"{s['r2_mean_all']:.3f} | R² var top100 {s['r2_var_top100']:.3f} all "
                  f"{s['r2_var_all']:.3f} | E-dist {s['e_distance']:.2f} | SD pred "
                  f"{median_sd(P):.3f} | fit {fit_s:6.1f}s predict {predict_s:5.1f}s | "
                  f"peak RSS {peak_rss_mib():.0f} MiB", flush=True)

    table = pd.DataFrame(rows).rename(columns=COLUMNS)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print("\nper held-out type:")
    print(table.set_index(["group", "model"]).round(3).to_string())
    print("\nmean over types:")
    print(table.groupby("model", sort=False)[list(COLUMNS.values())].mean().round(3).to_string())
    print(f"peak RSS of this process: {peak_rss_mib():.0f} MiB")

    if len(groups) > 1:
        print("\nmode-collapse check: Pearson r between the deltas (mean − held-out control "
              "mean) of different held-out types, mean [min, max] over pairs")
        print(f"{'truth':>18}: %.3f [%.3f, %.3f]" % mean_pairwise_correlation(true_delta))
        for label in pred_delta:
            print(f"{label:>18}: %.3f [%.3f, %.3f]" % mean_pairwise_correlation(pred_delta[label]))


if __name__ == "__main__":
    main()
