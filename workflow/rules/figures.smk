from itertools import product

# The model entries that are scGen (the default and its ablations, e.g. norm: layer | none):
# their latent spaces are compared side by side.
SCGEN_MODELS = [m for m in MODELS if model_entry(config, m)["model"] == "scgen"]

FIGURE_OUTPUTS = (
    expand(
        "results/{dataset}/figures/{name}.{ext}",
        dataset=DATASETS,
        name=["r2_mean_top100", "r2_mean_all", "metrics_heatmap", "ranking", "cost"]
        + (["scgen_latents"] if SCGEN_MODELS else []),
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
        predictions=lambda w: expand(
            f"{RUN}/prediction.h5ad",
            group=held_out_groups(w.dataset),
            seed=SEEDS[0],
            allow_missing=True,
        ),
        truths=split_files("truth.h5ad"),
        controls=split_files("control.h5ad"),
        degs=split_files("degs.csv"),
    output:
        mean=report(
            directory("results/{dataset}/figures/mean_scatter/{model}"),
            patterns=["{group}.png"],
            caption="../report/mean_scatter.rst",
            category="Mean expression: predicted vs real",
            subcategory="{model}",
            labels={"model": "{model}", "held-out group": "{group}"},
        ),
        variance=report(
            directory("results/{dataset}/figures/variance_scatter/{model}"),
            patterns=["{group}.png"],
            caption="../report/variance_scatter.rst",
            category="Expression variance: predicted vs real",
            subcategory="{model}",
            labels={"model": "{model}", "held-out group": "{group}"},
        ),
        umap=report(
            directory("results/{dataset}/figures/umap/{model}"),
            patterns=["{group}.png"],
            caption="../report/umap.rst",
            category="UMAP: control, real and predicted cells",
            subcategory="{model}",
            labels={"model": "{model}", "held-out group": "{group}"},
        ),
    log:
        "results/{dataset}/logs/plot_predictions/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/plot_predictions/{model}.tsv"
    conda:
        "../../envs/figures.yaml"
    params:
        groups=lambda w: held_out_groups(w.dataset),
        models=MODELS,
        seed=SEEDS[0],
    script:
        "../../scripts/plot_predictions.py"


rule plot_violins:
    input:
        # every model (inner) of every held-out group (outer): expand's product order
        predictions=lambda w: expand(
            f"{RUN}/prediction.h5ad",
            group=held_out_groups(w.dataset),
            model=MODELS,
            seed=SEEDS[0],
            allow_missing=True,
        ),
        truths=split_files("truth.h5ad"),
        controls=split_files("control.h5ad"),
        degs=split_files("degs.csv"),
    output:
        report(
            directory("results/{dataset}/figures/violin"),
            patterns=["{group}.png"],
            caption="../report/violin.rst",
            category="Top DEGs: control, real and predicted",
            labels={"dataset": "{dataset}", "held-out group": "{group}"},
        ),
    log:
        "results/{dataset}/logs/plot_violins.log",
    benchmark:
        "results/{dataset}/benchmarks/plot_violins.tsv"
    conda:
        "../../envs/figures.yaml"
    params:
        groups=lambda w: held_out_groups(w.dataset),
        models=MODELS,
        n_genes=3,
    script:
        "../../scripts/plot_violins.py"


rule plot_latent:
    input:
        # The latent of the first held-out group's first-seed model, over all cells.
        model=lambda w: expand(
            f"{RUN}/model",
            group=held_out_groups(w.dataset)[0],
            seed=SEEDS[0],
            allow_missing=True,
        ),
        cells="results/{dataset}/preprocessed.h5ad",
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
        spec=dataset_spec,
        entry=lambda w: model_entry(config, w.model),
        group=lambda w: held_out_groups(w.dataset)[0],
        seed=SEEDS[0],
    script:
        "../../scripts/plot_latent.py"


rule plot_scgen_latents:
    input:
        models=lambda w: expand(
            f"{RUN}/model",
            model=SCGEN_MODELS,
            group=held_out_groups(w.dataset)[0],
            seed=SEEDS[0],
            allow_missing=True,
        ),
        cells="results/{dataset}/preprocessed.h5ad",
    output:
        png=report(
            "results/{dataset}/figures/scgen_latents.png",
            caption="../report/scgen_latents.rst",
            category="Latent spaces",
            subcategory="scGen: Leiden clusters and encoder normalisation",
            labels={"dataset": "{dataset}", "models": ", ".join(SCGEN_MODELS)},
        ),
        pdf="results/{dataset}/figures/scgen_latents.pdf",
    log:
        "results/{dataset}/logs/plot_scgen_latents.log",
    benchmark:
        "results/{dataset}/benchmarks/plot_scgen_latents.tsv"
    conda:
        "../../envs/figures.yaml"
    params:
        spec=dataset_spec,
        models=SCGEN_MODELS,
        seed=SEEDS[0],
    script:
        "../../scripts/plot_scgen_latents.py"


rule plot_cost:
    input:
        # every model, held-out group and seed, in expand's product order (as params.runs)
        lambda w: expand(
            "results/{dataset}/benchmarks/train_predict/{model}/{group}/seed{seed}.tsv",
            model=MODELS,
            group=held_out_groups(w.dataset),
            seed=SEEDS,
            allow_missing=True,
        ),
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
        runs=lambda w: list(product(MODELS, held_out_groups(w.dataset), SEEDS)),
    script:
        "../../scripts/plot_cost.py"
