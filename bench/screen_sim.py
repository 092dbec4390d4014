"""The screen analysis measured on the simulation (issue 19): effect ranking AUROC (cross-fitted
salient E-distance, the same on the model's training cells, PCA, the expression statistic),
responder calls vs escapers beside the Mixscape-like baseline, kNN accuracy of perturbation and
phase in each latent, latent DEGs vs Wilcoxon precision@20 on acting targets.

    .venv/bin/python bench/screen_sim.py [--seeds 0 1] [--n-cells 4000] [--epochs 60] \
        [--params '{"classifier_weight": 0}']
"""

import argparse
import json

from pertflow import screen
from pertflow import screen_analysis as sa

parser = argparse.ArgumentParser()
parser.add_argument("--seeds", type=int, nargs="+", default=[0])
parser.add_argument("--n-cells", type=int, default=4000)
parser.add_argument("--epochs", type=int, default=60)
parser.add_argument("--params", type=json.loads, default={},
                    help="contrastiveVI params over the screen's (JSON)")
args = parser.parse_args()

for seed in args.seeds:
    raw = screen.simulate_screen(n_cells=args.n_cells, seed=seed)
    spec = {"perturbation_key": "perturbation", "control": "non-targeting",
            "covariates": ["batch"], "min_cells": 20, "qc": {"min_genes": 50},
            "hvg": {"n_top_genes": 600},
            "params": {"max_epochs": args.epochs, "kl_warmup_epochs": args.epochs // 3,
                       **args.params}}
    cells = sa.prepare(raw, spec, "sim", seed=seed)
    model = sa.train(cells, spec, seed)
    folds = [sa.train(cells, spec, seed, fold=k) for k in range(sa.N_FOLDS)]
    out, table, de = sa.analyse(cells, model, folds, spec, seed=seed, n_permutations=500,
                                n_samples=10)
    truth = screen.truth_table(raw)
    acting = truth.index[truth["acting"]]
    labels = out.obs["perturbation"].astype(str).to_numpy()
    escaped = out.obs["escaped"].to_numpy()
    table = table.set_index("perturbation")
    print(f"seed {seed}: {out.n_obs} cells × {out.n_vars} genes")
    in_sample = screen.effect_sizes(out.obsm["X_salient"], labels, "non-targeting",
                                    n_permutations=500, seed=seed)
    pca = screen.effect_sizes(out.obsm["X_pca"], labels, "non-targeting", n_permutations=500,
                              seed=seed)
    for name, effects, column in (
            ("salient, cross-fitted", table, "e_distance"),
            ("salient, the model's training cells", in_sample, "e_distance"),
            ("PCA E-distance", pca, "e_distance"),
            ("expression statistic", table.filter(like="expression_").rename(
                columns=lambda c: c.removeprefix("expression_")), "t2")):
        significant = effects["q_value"] < 0.05
        print("  effect AUROC %s: %.3f; q < 0.05: %d acting, %d not" % (
            name, screen.effect_auroc(effects[column], truth["acting"]),
            significant[acting].sum(), significant.drop(acting).sum()))
    ko = out.obs["mixscape_class_global"].astype(str).to_numpy() == "KO"
    for name, responder in (("contrastiveVI", out.obs["responder"].to_numpy()),
                            ("Mixscape-like", ko)):
        s = screen.responder_scores(responder, escaped, labels, acting)
        print(f"  responders {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()))
    for space in ("X_background", "X_salient", "X_pca"):
        pert = screen.knn_accuracy(out.obsm[space], labels, seed=seed)
        phase = screen.knn_accuracy(out.obsm[space], out.obs["phase"], seed=seed)
        print(f"  kNN {space}: perturbation {pert['accuracy']:.3f} (chance {pert['chance']:.3f}),"
              f" phase {phase['accuracy']:.3f} (chance {phase['chance']:.3f})")
    genes = screen.truth_genes(raw)
    # Wilcoxon on the cells latent DE used (the responders) vs the controls.
    wilcoxon = screen.wilcoxon_de(out, "perturbation", "non-targeting",
                                  perturbations=list(acting), use=out.obs["responder"].to_numpy())
    latent_p = screen.precision_at_k(de, genes)
    wilcoxon_p = screen.precision_at_k(wilcoxon, genes)
    cyc = truth.index[truth["cycle_shift"]]
    print("  precision@20 latent DE %.3f, Wilcoxon %.3f; cell-cycle-confounded: latent %.3f, "
          "Wilcoxon %.3f" % (latent_p.mean(), wilcoxon_p.mean(),
                             latent_p.reindex(cyc).mean(), wilcoxon_p.reindex(cyc).mean()))
