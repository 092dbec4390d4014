EVALUATION_OUTPUTS = expand(
    [
        "results/{dataset}/metrics.csv",
        "results/{dataset}/metrics_summary.csv",
        "results/{dataset}/summary.md",
    ],
    dataset=DATASETS,
)


rule evaluate:
    input:
        prediction=f"{RUN}/prediction.h5ad",
        truth=f"{SPLIT}/truth.h5ad",
        control=f"{SPLIT}/control.h5ad",
        degs=f"{SPLIT}/degs.csv",
        # Its perturbed cells are the reference of Pearson-delta against perturbed cells.
        train=f"{SPLIT}/train.h5ad",
    output:
        f"{RUN}/metrics.json",
    log:
        f"{RUN}/evaluate.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate/{model}/{group}/seed{seed}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    params:
        spec=dataset_spec,
        # Seeds the cell subsampling and PCA of the distance metrics.
        seed=lambda w: int(w.seed),
    script:
        "../../scripts/evaluate.py"


rule aggregate_metrics:
    input:
        run_metrics,
    output:
        report(
            "results/{dataset}/metrics.csv",
            caption="../report/metrics.rst",
            category="Metrics",
            labels={"dataset": "{dataset}", "result": "all runs"},
        ),
    log:
        "results/{dataset}/logs/aggregate_metrics.log",
    conda:
        "../../envs/evaluate.yaml"
    script:
        "../../scripts/aggregate_metrics.py"


rule summarise:
    input:
        "results/{dataset}/metrics.csv",
    output:
        table=report(
            "results/{dataset}/metrics_summary.csv",
            caption="../report/metrics_summary.rst",
            category="Metrics",
            labels={"dataset": "{dataset}", "result": "means and 95% intervals"},
        ),
        text=report(
            "results/{dataset}/summary.md",
            caption="../report/summary.rst",
            category="Metrics",
            labels={"dataset": "{dataset}", "result": "summary in words"},
        ),
    log:
        "results/{dataset}/logs/summarise.log",
    benchmark:
        "results/{dataset}/benchmarks/summarise.tsv"
    conda:
        "../../envs/evaluate.yaml"
    params:
        baselines=baseline_models(config),
    script:
        "../../scripts/summarise.py"
