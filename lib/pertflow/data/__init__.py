"""The data stages (workflow/rules/data.smk, preprocess.smk, split.smk): reading and standardising
a dataset, QC and normalisation, and the leave-one-group-out splits."""
