FIGURE_OUTPUTS = (
    expand(
        [
            "results/{dataset}/figures/r2_mean_top100.{ext}",
            "results/{dataset}/figures/r2_mean_all.{ext}",
        ],
        dataset=DATASETS,
        ext=["png", "pdf"],
    )
    + expand(
        "results/{dataset}/figures/scatter/{model}", dataset=DATASETS, model=MODELS
    )
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
            category="R² across held-out groups",
            labels={"dataset": "{dataset}", "metric": "{metric}"},
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
    script:
        "../../scripts/plot_r2.py"


rule plot_scatter:
    input:
        predictions=lambda w: expand(
            f"{RUN}/prediction.h5ad",
            seed=SEEDS[0],
            group=held_out_groups(w.dataset),
            allow_missing=True,
        ),
        truths=lambda w: expand(
            f"{SPLIT}/truth.h5ad", group=held_out_groups(w.dataset), allow_missing=True
        ),
        degs=lambda w: expand(
            f"{SPLIT}/degs.csv", group=held_out_groups(w.dataset), allow_missing=True
        ),
    output:
        report(
            directory("results/{dataset}/figures/scatter/{model}"),
            patterns=["{group}.png"],
            caption="../report/scatter.rst",
            category="Mean expression: predicted vs real",
            subcategory="{model}",
            labels={"model": "{model}", "held-out group": "{group}"},
        ),
    log:
        "results/{dataset}/logs/plot_scatter/{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/plot_scatter/{model}.tsv"
    conda:
        "../../envs/figures.yaml"
    params:
        groups=lambda w: held_out_groups(w.dataset),
    script:
        "../../scripts/plot_scatter.py"


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
        "../../envs/models.yaml"
    params:
        spec=dataset_spec,
        entry=lambda w: model_entry(config, w.model),
        group=lambda w: held_out_groups(w.dataset)[0],
        seed=SEEDS[0],
    script:
        "../../scripts/plot_latent.py"
