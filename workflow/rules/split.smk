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
        # Keys and labels of the whole dataset (`perturbed:` may be `all`, known from the cells).
        spec=lambda w: {
            key: dataset_spec(w)[key]
            for key in ("condition_key", "control", "perturbed", "group_key")
        },
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
        "results/{dataset}/logs/split/{split}.log",
    benchmark:
        "results/{dataset}/benchmarks/split/{split}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        experiment_keys=experiment_keys,
        held_out=held_out_of,
        hide_other_perturbations=lambda w: dataset_spec(w)[
            "hide_other_perturbations_of_group"
        ],
        n_top_degs=config["n_top_degs"],
    script:
        "../../scripts/split.py"
