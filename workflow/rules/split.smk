checkpoint held_out_groups:
    input:
        "results/{dataset}/preprocessed.h5ad",
    output:
        "results/{dataset}/held_out_groups.json",
    log:
        "results/{dataset}/logs/held_out_groups.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        experiment_keys=experiment_keys,
        held_out=lambda w: dataset_spec(w)["held_out"],
        min_cells=lambda w: dataset_spec(w)["min_cells"],
    script:
        "../../scripts/held_out_groups.py"


rule split:
    input:
        data="results/{dataset}/preprocessed.h5ad",
    output:
        train=f"{SPLIT}/train.h5ad",
        control=f"{SPLIT}/control.h5ad",
        truth=f"{SPLIT}/truth.h5ad",
        degs=f"{SPLIT}/degs.csv",
    log:
        "results/{dataset}/logs/split/{group}.log",
    benchmark:
        "results/{dataset}/benchmarks/split/{group}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        experiment_keys=experiment_keys,
        n_top_degs=config["n_top_degs"],
    script:
        "../../scripts/split.py"
