EVALUATION_OUTPUTS = expand(
    [
        "results/{dataset}/metrics.csv",
        "results/{dataset}/metrics_summary.csv",
        "results/{dataset}/summary.md",
        "results/{dataset}/transfer.csv",
        "results/{dataset}/verdict.rst",
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
        "results/{dataset}/benchmarks/evaluate/{model}/{split}/seed{seed}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    params:
        experiment_keys=experiment_keys,
        held_out=held_out_of,
        # Seeds the cell subsampling and PCA of the distance metrics, and the ceiling's halves.
        seed=lambda w: int(w.seed),
        # A split with fewer than 2 × min_cells perturbed cells gets no ceiling.
        min_cells=lambda w: dataset_spec(w)["min_cells"],
        ceiling_draws=config["ceiling_draws"],
    script:
        "../../scripts/evaluate.py"


rule aggregate_metrics:
    input:
        metrics=run_metrics,
        # The checkpoint's plan of the held-out splits (and its log of cells per group).
        groups=HELD_OUT_GROUPS,
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


# What the models that transfer the training groups' responses chose, read from each prediction's
# uns (not its matrix): settings, α and weights per split (header only if none transfers).
rule collect_transfer:
    input:
        lambda w: list(run_files(f"{RUN}/prediction.h5ad")(w)),
    output:
        report(
            "results/{dataset}/transfer.csv",
            caption="../report/transfer.rst",
            category="Metrics",
            labels={"dataset": "{dataset}", "result": "transfer choices"},
        ),
    log:
        "results/{dataset}/logs/collect_transfer.log",
    benchmark:
        "results/{dataset}/benchmarks/collect_transfer.tsv"
    conda:
        "../../envs/evaluate.yaml"
    params:
        # {prediction path: its model, perturbation, group and seed}
        runs=run_files(f"{RUN}/prediction.h5ad"),
    script:
        "../../scripts/collect_transfer.py"


rule summarise:
    input:
        metrics="results/{dataset}/metrics.csv",
        # Its warnings (a QC rule that matched no gene) are repeated in the summary and verdict.
        qc=QC_REPORT,
        transfer="results/{dataset}/transfer.csv",
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
        # The report's front page (workflow/report/workflow.rst) shows it; see pertflow.benchmark.verdict.
        verdict=report(
            "results/{dataset}/verdict.rst",
            caption="../report/verdict.rst",
            category="Metrics",
            labels={"dataset": "{dataset}", "result": "verdict (front page)"},
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
