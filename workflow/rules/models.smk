rule train_predict:
    input:
        train=f"{SPLIT}/train.h5ad",
        control=f"{SPLIT}/control.h5ad",
        # The splits planned, for the log's estimate of the training time left.
        splits=ancient(HELD_OUT_GROUPS),
    output:
        model=directory(f"{RUN}/model"),
        prediction=f"{RUN}/prediction.h5ad",
    log:
        f"{RUN}/train_predict.log",
    benchmark:
        TRAIN_BENCHMARK
    conda:
        "../../envs/models.yaml"
    threads: model_resource("threads")
    resources:
        gpu=gpus,
        # Unset for CPU jobs and GPU jobs without a configured model (any GPU).
        gpu_model=lambda w: model_resource("gpu_model")(w) if gpus(w) else None,
        cpus_per_task=lambda w, threads: threads,
        # A job that ran out of memory is retried (profile `retries`) with more.
        mem_mb=lambda w, attempt: model_resource("mem_mb")(w) * attempt,
    # Its params are what it learns from: the model entry (no resources) and the split's keys.
    params:
        entry=lambda w: training_entry(w.model),
        experiment_keys=experiment_keys,
        seed=lambda w: int(w.seed),
        # The rest of the estimate. A function of `input`, which makes it a param Snakemake
        # does not compare for a rerun: adding a model or a seed must not rerun every training.
        progress=lambda w, input: {
            "models": MODELS,
            "n_seeds": len(SEEDS),
            "benchmarks": TRAIN_BENCHMARKS.format(dataset=w.dataset),
        },
    script:
        "../../scripts/train_predict.py"
