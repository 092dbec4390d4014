# The one check of the held-out plan: each split's group has `min_cells` control and perturbed
# cells after QC. Its file is an input of every split's jobs, marked ancient: rewritten for a new
# `held_out` or `min_cells`, it adds the jobs of new splits and reruns none of the others.
checkpoint held_out_groups:
    input:
        PREPROCESSED,
    output:
        HELD_OUT_GROUPS,
    log:
        "results/{dataset}/logs/held_out_groups.log",
    conda:
        "../../envs/preprocess.yaml"
    params:
        # The keys and labels of the whole dataset, `held_out` and `min_cells`
        # (pertflow.config.PLAN_KEYS).
        plan=lambda w: canonical(DATASET_SPECS[w.dataset].plan),
    script:
        "../../scripts/held_out_groups.py"


rule split:
    input:
        data=PREPROCESSED,
        splits=ancient(HELD_OUT_GROUPS),
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
