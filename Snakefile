# pertflow: leave-one-group-out benchmark of single-cell perturbation-response prediction.
from snakemake.utils import min_version

min_version("9.0")


# A config given with --configfile replaces the default run's instead of being merged into it
# (merged, it would also run the default dataset, and the union of both configs' models).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# Checks and validates the config (workflow/schemas/config.schema.yaml) before anything runs.
include: "workflow/rules/common.smk"


# The report's front page: the verdict of every dataset (results/{dataset}/verdict.rst).
report: "workflow/report/workflow.rst"


include: "workflow/rules/data.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/screen.smk"


# Under a cluster executor (profiles/slurm) these run on the submitting host: the download needs
# the network compute nodes often lack; the others read small tables
# or draw figures from them. Figures that read predictions or models are submitted like the rest.
localrules:
    download,
    held_out_groups,
    aggregate_metrics,
    summarise,
    plot_r2,
    plot_metrics,
    plot_cost,


rule all:
    default_target: True
    input:
        EVALUATION_OUTPUTS,
        FIGURE_OUTPUTS,
        SCREEN_OUTPUTS,
