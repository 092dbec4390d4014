"""The screen analysis measured on the simulation (issue 19): effect ranking AUROC (cross-fitted
salient E-distance, the same on the model's training cells, PCA, the expression statistic),
responder calls vs escapers beside the Mixscape-like baseline, kNN accuracy of perturbation and
phase in each latent, latent DEGs vs Wilcoxon precision@20 on acting targets.

    .venv/bin/python bench/screen_sim.py [--seeds 0 1] [--n-cells 4000] [--epochs 60] \
        [--params '{"classifier_weight": 0}']
"""

import argparse
import json
from pathlib import Path

from pertflow.config import check_screens, validate_config
from pertflow.screen import analysis
from pertflow.screen.de import wilcoxon_de
from pertflow.screen.effects import effect_sizes
from pertflow.screen.evaluation import effect_auroc, knn_accuracy, precision_at_k, responder_scores
from pertflow.simulate.screen import simulate_screen, truth_genes, truth_table

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"

parser = argparse.ArgumentParser()
parser.add_argument("--seeds", type=int, nargs="+", default=[0])
parser.add_argument("--n-cells", type=int, default=4000)
parser.add_argument("--epochs", type=int, default=60)
parser.add_argument("--params", type=json.loads, default={},
                    help="contrastiveVI params over the screen's (JSON)")
args = parser.parse_args()

for seed in args.seeds:
    config = {"screens": {"sim": {
        "source": {"simulate": {"n_cells": args.n_cells, "seed": seed}},
        "perturbation_key": "perturbation", "control": "non-targeting", "covariates": ["batch"],
        "min_cells": 20, "qc": {"min_genes": 50}, "hvg": {"n_top_genes": 600},
        "params": {"max_epochs": args.epochs, "kl_warmup_epochs": args.epochs // 3,
                   **args.params},
        "n_permutations": 500, "n_samples": 10, "seed": seed}}}
    # The workflow's defaults and parse-time checks: the analysis reads every key of the entry.
    validate_config(config, SCHEMA)
    check_screens(config)
    spec = config["screens"]["sim"]
    raw = simulate_screen(**spec["source"]["simulate"])
    cells = analysis.prepare(raw, spec, "sim", seed=seed)
    model = analysis.train(cells, spec, seed)
    folds = [analysis.train(cells, spec, seed, fold=k) for k in range(spec["n_folds"])]
    out, table, de = analysis.analyse(cells, model, folds, spec, seed=seed,
                                      n_permutations=spec["n_permutations"],
                                      n_samples=spec["n_samples"])
    truth = truth_table(raw)
    acting = truth.index[truth["acting"]]
    labels = out.obs["perturbation"].astype(str).to_numpy()
    escaped = out.obs["escaped"].to_numpy()
    table = table.set_index("perturbation")
    print(f"seed {seed}: {out.n_obs} cells × {out.n_vars} genes")
    in_sample = effect_sizes(out.obsm["X_salient"], labels, "non-targeting",
                             n_permutations=spec["n_permutations"], seed=seed)
    pca = effect_sizes(out.obsm["X_pca"], labels, "non-targeting",
                       n_permutations=spec["n_permutations"], seed=seed)
    for name, effects, column in (
            ("salient, cross-fitted", table, "e_distance"),
            ("salient, the model's training cells", in_sample, "e_distance"),
            ("PCA E-distance", pca, "e_distance"),
            ("expression statistic", table.filter(like="expression_").rename(
                columns=lambda c: c.removeprefix("expression_")), "t2")):
        significant = effects["q_value"] < 0.05
        print("  effect AUROC %s: %.3f; q < 0.05: %d acting, %d not" % (
            name, effect_auroc(effects[column], truth["acting"]),
            significant[acting].sum(), significant.drop(acting).sum()))
    ko = out.obs["mixscape_class_global"].astype(str).to_numpy() == "KO"
    for name, responder in (("contrastiveVI", out.obs["responder"].to_numpy()),
                            ("Mixscape-like", ko)):
        s = responder_scores(responder, escaped, labels, acting)
        print(f"  responders {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()))
    for space in ("X_background", "X_salient", "X_pca"):
        pert = knn_accuracy(out.obsm[space], labels, seed=seed)
        phase = knn_accuracy(out.obsm[space], out.obs["phase"], seed=seed)
        print(f"  kNN {space}: perturbation {pert['accuracy']:.3f} (chance {pert['chance']:.3f}),"
              f" phase {phase['accuracy']:.3f} (chance {phase['chance']:.3f})")
    genes = truth_genes(raw)
    # Wilcoxon on the cells latent DE used (the responders) vs the controls.
    wilcoxon = wilcoxon_de(out, "perturbation", "non-targeting", perturbations=list(acting),
                           use=out.obs["responder"].to_numpy())
    latent_p = precision_at_k(de, genes)
    wilcoxon_p = precision_at_k(wilcoxon, genes)
    cyc = truth.index[truth["cycle_shift"]]
    print("  precision@20 latent DE %.3f, Wilcoxon %.3f; cell-cycle-confounded: latent %.3f, "
          "Wilcoxon %.3f" % (latent_p.mean(), wilcoxon_p.mean(),
                             latent_p.reindex(cyc).mean(), wilcoxon_p.reindex(cyc).mean()))
