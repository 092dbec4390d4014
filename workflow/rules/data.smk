rule simulate:
    output:
        SIMULATED,
    log:
        "results/{dataset}/logs/simulate.log",
    benchmark:
        "results/{dataset}/benchmarks/simulate.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        simulate=lambda w: canonical(dataset_spec(w)["source"]["simulate"]),
    script:
        "../../scripts/simulate.py"


rule download:
    output:
        DOWNLOADED,
    log:
        "results/{dataset}/logs/download.log",
    benchmark:
        "results/{dataset}/benchmarks/download.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        source=lambda w: canonical(dataset_spec(w)["source"]),
    script:
        "../../scripts/download.py"
