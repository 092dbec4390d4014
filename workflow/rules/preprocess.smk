rule preprocess:
    input:
        raw_path,
    output:
        data=PREPROCESSED,
        # Cells and genes kept, and warnings (a QC rule matching no gene) for the summary.
        qc=QC_REPORT,
    log:
        "results/{dataset}/logs/preprocess.log",
    benchmark:
        "results/{dataset}/benchmarks/preprocess.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        # Only the keys that shape the preprocessed data (pertflow.config.PREPROCESS_KEYS).
        spec=lambda w: canonical(DATASET_SPECS[w.dataset].preprocess),
    script:
        "../../scripts/preprocess.py"
