import re

# Imported while the DAG is built: a module without matplotlib.
from pertflow.benchmark.figure_inputs import panel_splits

# Datasets whose `perturbed:` names several perturbations (a list, or all): they get scGen's
# Figure 3, a row per perturbation (rule plot_perturbations).
SEVERAL_PERTURBATIONS = [
    d for d in DATASETS if names_several(config["datasets"][d]["perturbed"])
]

FIGURE_OUTPUTS = (
    expand(
        "results/{dataset}/figures/{name}.{ext}",
        dataset=DATASETS,
        name=["r2_mean_top100", "r2_mean_all", "metrics_heatmap", "ranking", "cost"]
        + [f"{cls}_latents" for cls in LATENT_CLASSES],
        ext=["png", "pdf"],
    )
    + expand(
        "results/{dataset}/figures/{kind}/{model}",
        dataset=DATASETS,
        kind=["mean_scatter", "variance_scatter", "umap"],
        model=MODELS,
    )
    + expand("results/{dataset}/figures/violin", dataset=DATASETS)
    + expand(
        "results/{dataset}/figures/latent/{model}",
        dataset=DATASETS,
        model=LATENT_MODELS,
    )
    + expand(
        "results/{dataset}/figures/perturbations/{model}.{ext}",
        dataset=SEVERAL_PERTURBATIONS,
        model=MODELS,
        ext=["png", "pdf"],
    )
)


rule plot_r2:
    input:
        "results/{dataset}/metrics.csv",
    output:
        png=report(
            "results/{dataset}/figures/r2_{metric}.png",
            caption="../report/r2_bars.rst",
            category="Metrics across held-out groups",
            labels={"dataset": "{dataset}", "figure": "R² {metric}"},
        ),
        pdf="results/{dataset}/figures/r2_{metric}.pdf",
    log:
        "results/{dataset}/logs/plot_r2_{metric}.log",
    benchmark:
        "results/{dataset}/benchmarks/plot_r2_{metric}.tsv"
    wildcard_constraints:
        metric=r"mean_all|mean_top100|var_all|var_top100",
    conda:
        "../../envs/figures.yaml"
    params:
        models=MODELS,
    script:
        "../../scripts/plot_r2.py"


rule plot_metrics:
    input:
        "results/{dataset}/metrics.csv",
    output:
        heatmap=report(
            "results/{dataset}/figures/metrics_heatmap.png",
            caption="../report/metrics_heatmap.rst",
            category="Metrics across held-out groups",
            labels={"dataset": "{dataset}", "figure": "every metric"},
        ),
        heatmap_pdf="results/{dataset}/figures/metrics_heatmap.pdf",
        ranking=report(
            "results/{dataset}/figures/ranking.png",
            caption="../report/ranking.rst",
            category="Metrics across held-out groups",
            labels={"dataset": "{dataset}", "figure": "ranking"},
        ),
        ranking_pdf="results/{dataset}/figures/ranking.pdf",
    log:
        "results/{dataset}/logs/plot_metrics.log",
    benchmark:
        "results/{dataset}/benchmarks/plot_metrics.tsv"
    conda:
        "../../envs/figures.yaml"
    params:
        models=MODELS,
    script:
        "../../scripts/plot_metrics.py"


rule plot_predictions:
    input:
        lambda w: paths(split_files(w, [w.model])),
    output:
        mean=report(
            directory("results/{dataset}/figures/mean_scatter/{model}"),
            patterns=["{split}.png"],
            caption="../report/mean_scatter.rst",
            category="Mean expression: predicted vs real",
            subcategory="{model}",
            labels={"model": "{model}", "held out": "{split}"},
        ),
        variance=report(
            directory("results/{dataset}/figures/variance_scatter/{model}"),
            patterns=["{split}.png"],
            caption="../report/variance_scatter.rst",
            category="Expression variance: predicted vs real",
            subcategory="{model}",
            labels={"model": "{model}", "held out": "{split}"},
        ),
        umap=report(
            directory("results/{dataset}/figures/umap/{model}"),
            patterns=["{split}.png"],
            caption="../report/umap.rst",
            category="UMAP: control, real and predicted cells",
            subcategory="{model}",
            labels={"model": "{model}", "held out": "{split}"},
        ),
    log:
        "results/{dataset}/logs/plot_predictions/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/plot_predictions/{model}.tsv"
    conda:
        "../../envs/figures.yaml"
    params:
        # {split: {"control", "truth", "degs", "predictions": {model: path}}}
        files=lambda w: split_files(w, [w.model]),
        models=MODELS,
        seed=SEEDS[0],
    script:
        "../../scripts/plot_predictions.py"


rule plot_violins:
    input:
        lambda w: paths(split_files(w, MODELS)),
    output:
        report(
            directory("results/{dataset}/figures/violin"),
            patterns=["{split}.png"],
            caption="../report/violin.rst",
            category="Top DEGs: control, real and predicted",
            labels={"dataset": "{dataset}", "held out": "{split}"},
        ),
    log:
        "results/{dataset}/logs/plot_violins.log",
    benchmark:
        "results/{dataset}/benchmarks/plot_violins.tsv"
    conda:
        "../../envs/figures.yaml"
    params:
        # {split: {"control", "truth", "degs", "predictions": {model: path}}}
        files=lambda w: split_files(w, MODELS),
        models=MODELS,
        n_genes=3,
    script:
        "../../scripts/plot_violins.py"


rule plot_latent:
    input:
        # The latent of the first split's first-seed model, over all cells.
        model=lambda w: expand(
            f"{RUN}/model",
            split=held_out_splits(w.dataset)[0],
            seed=SEEDS[0],
            allow_missing=True,
        ),
        cells=PREPROCESSED,
    output:
        report(
            directory("results/{dataset}/figures/latent/{model}"),
            patterns=["{latent}.png"],
            caption="../report/latent.rst",
            category="Latent spaces",
            subcategory="{model}",
            labels={"model": "{model}", "latent": "{latent}"},
        ),
    log:
        "results/{dataset}/logs/plot_latent/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/plot_latent/{model}.tsv"
    conda:
        "../../envs/figures.yaml"
    params:
        experiment_keys=experiment_keys,
        latent_colors=lambda w: dataset_spec(w)["latent_colors"],
        entry=lambda w: training_entry(w.model),
        held_out=lambda w: asdict(
            split_named(dataset_spec(w), held_out_splits(w.dataset)[0])
        ),
        seed=SEEDS[0],
    script:
        "../../scripts/plot_latent.py"


rule plot_latent_comparison:
    input:
        models=lambda w: list(latent_models(w).values()),
        cells=PREPROCESSED,
    output:
        png=report(
            "results/{dataset}/figures/{cls}_latents.png",
            caption="../report/latent_comparison.rst",
            category="Latent spaces",
            subcategory="Entries of one model class: Leiden clusters",
            labels={"dataset": "{dataset}", "model class": "{cls}"},
        ),
        pdf="results/{dataset}/figures/{cls}_latents.pdf",
    log:
        "results/{dataset}/logs/plot_latent_comparison/{cls}.log",
    benchmark:
        "results/{dataset}/benchmarks/plot_latent_comparison/{cls}.tsv"
    wildcard_constraints:
        cls="|".join(map(re.escape, LATENT_CLASSES)) or "(?!)",
    conda:
        "../../envs/figures.yaml"
    params:
        experiment_keys=experiment_keys,
        # {entry: its model directory} and {entry: {"model", "module", "params"}}, config order
        models=latent_models,
        entries=lambda w: {m: training_entry(m) for m in LATENT_CLASSES[w.cls]},
        seed=SEEDS[0],
    script:
        "../../scripts/plot_latent_comparison.py"


rule plot_cost:
    input:
        lambda w: list(run_files(TRAIN_BENCHMARK)(w)),
    output:
        png=report(
            "results/{dataset}/figures/cost.png",
            caption="../report/cost.rst",
            category="Cost",
            labels={"dataset": "{dataset}", "figure": "training time and memory"},
        ),
        pdf="results/{dataset}/figures/cost.pdf",
    log:
        "results/{dataset}/logs/plot_cost.log",
    benchmark:
        "results/{dataset}/benchmarks/plot_cost.tsv"
    conda:
        "../../envs/figures.yaml"
    params:
        # {benchmark path: its model, perturbation, group and seed}
        runs=run_files(TRAIN_BENCHMARK),
    script:
        "../../scripts/plot_cost.py"


rule plot_perturbations:
    input:
        metrics="results/{dataset}/metrics.csv",
        splits=lambda w: paths(panel_splits(dataset_spec(w), split_files(w, [w.model]))),
    output:
        png=report(
            "results/{dataset}/figures/perturbations/{model}.png",
            caption="../report/perturbations.rst",
            category="Several perturbations",
            labels={"dataset": "{dataset}", "model": "{model}"},
        ),
        pdf="results/{dataset}/figures/perturbations/{model}.pdf",
    log:
        "results/{dataset}/logs/plot_perturbations/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/plot_perturbations/{model}.tsv"
    conda:
        "../../envs/figures.yaml"
    params:
        # {split: {"truth", "degs", "predictions": {model: path}}}, the split each
        # perturbation's row shows (the dataset's `panel_group`, else its first held-out group)
        files=lambda w: panel_splits(dataset_spec(w), split_files(w, [w.model])),
        # {split: {"perturbation", "group"}}
        held_out=lambda w: {
            name: asdict(split_named(dataset_spec(w), name))
            for name in panel_splits(dataset_spec(w), split_files(w))
        },
        models=MODELS,
    script:
        "../../scripts/plot_perturbations.py"
