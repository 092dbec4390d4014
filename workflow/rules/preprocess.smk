rule preprocess:
    input:
        raw_path,
    output:
        data="results/{dataset}/preprocessed.h5ad",
        # Cells and genes kept, and warnings (a QC rule matching no gene) for the summary.
        qc="results/{dataset}/qc.json",
    log:
        "results/{dataset}/logs/preprocess.log",
    benchmark:
        "results/{dataset}/benchmarks/preprocess.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        # Only the keys that shape the preprocessed data (common.smk's PREPROCESS_KEYS).
        spec=preprocess_spec,
    script:
        "../../scripts/preprocess.py"
