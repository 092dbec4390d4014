EVALUATION_OUTPUTS = expand("results/{dataset}/metrics.csv", dataset=DATASETS)


rule evaluate:
    input:
        prediction=f"{RUN}/prediction.h5ad",
        truth=f"{SPLIT}/truth.h5ad",
        control=f"{SPLIT}/control.h5ad",
        degs=f"{SPLIT}/degs.csv",
    output:
        f"{RUN}/metrics.json",
    log:
        f"{RUN}/evaluate.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate/{model}/{group}/seed{seed}.tsv"
    conda:
        "../../envs/evaluate.yaml"
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
            labels={"dataset": "{dataset}", "table": "all runs"},
        ),
    log:
        "results/{dataset}/logs/aggregate_metrics.log",
    conda:
        "../../envs/evaluate.yaml"
    script:
        "../../scripts/aggregate_metrics.py"
