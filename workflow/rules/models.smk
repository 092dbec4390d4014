rule train_predict:
    input:
        train=f"{SPLIT}/train.h5ad",
        control=f"{SPLIT}/control.h5ad",
    output:
        model=directory(f"{RUN}/model"),
        prediction=f"{RUN}/prediction.h5ad",
    log:
        f"{RUN}/train_predict.log",
    benchmark:
        "results/{dataset}/benchmarks/train_predict/{model}/{group}/seed{seed}.tsv"
    conda:
        "../../envs/models.yaml"
    threads: lambda w: model_entry(config, w.model)["threads"]
    resources:
        gpu=gpus,
        # Unset for CPU jobs and GPU jobs without a configured model (any GPU).
        gpu_model=lambda w: (
            config["models"][w.model].get("gpu_model") if gpus(w) else None
        ),
        cpus_per_task=lambda w, threads: threads,
        # A job that ran out of memory is retried (profile `retries`) with more.
        mem_mb=lambda w, attempt: config["models"][w.model]["mem_mb"] * attempt,
    params:
        entry=lambda w: model_entry(config, w.model),
        spec=dataset_spec,
        seed=lambda w: int(w.seed),
    script:
        "../../scripts/train_predict.py"
