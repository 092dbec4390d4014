import json
import os
import shutil

from snakemake.exceptions import WorkflowError

# The library is installed (`pip install -e .`; in conda envs by envs/install-pertflow.sh).
os.environ.update(PERTFLOW_ROOT=workflow.basedir)
try:
    from pertflow.config import (
        baseline_models,
        check_models,
        check_unique_keys,
        model_entry,
    )
except ImportError as error:
    raise WorkflowError(
        f"cannot import pertflow ({error}): install the workflow's library into the Python "
        f"that runs Snakemake with `pip install -e {workflow.basedir}` (`make run` does it)."
    ) from error
from pertflow.models import Model, get_model_class
from pertflow.utils import clear_stale_snakemake_locks

if workflow.is_main_process:
    # Held open while this run lasts; lets the next run tell a killed run's locks from a live one's.
    WORKDIR_LOCK = clear_stale_snakemake_locks()
check_unique_keys(workflow.configfiles)
check_models(config)

DATASETS = list(config["datasets"])
MODELS = list(config["models"])
SEEDS = config["seeds"]
# Models with a latent space (their class overrides Model.embed) get latent UMAP figures.
LATENT_MODELS = [
    m
    for m in MODELS
    if get_model_class(model_entry(config, m)["model"]).embed is not Model.embed
]
RUN = "results/{dataset}/runs/{model}/{group}/seed{seed}"
SPLIT = "results/{dataset}/splits/{group}"


wildcard_constraints:
    dataset=r"[^/]+",
    model=r"[^/]+",
    group=r"[^/]+",
    seed=r"\d+",


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def raw_path(wildcards):
    source = dataset_spec(wildcards)["source"]
    if "simulate" in source:
        return f"results/{wildcards.dataset}/simulated.h5ad"
    if "url" in source:
        return f"results/{wildcards.dataset}/download/raw.h5ad"
    return source["path"]


def held_out_groups(dataset):
    """The held-out groups, known once the checkpoint has looked at the preprocessed data."""
    with open(checkpoints.held_out_groups.get(dataset=dataset).output[0]) as f:
        return json.load(f)["groups"]


# `device: auto` trains on a GPU when the job sees one; on a GPU host such a job must hold one.
HOST_HAS_GPU = shutil.which("nvidia-smi") is not None


def split_files(name):
    """Input function: the split file ``name`` of every held-out group, in group order."""
    return lambda w: expand(
        f"{SPLIT}/{name}", dataset=w.dataset, group=held_out_groups(w.dataset)
    )


def gpus(wildcards):
    """GPUs a training job holds: the entry's `gpu`, or one for a model that will use CUDA."""
    entry = model_entry(config, wildcards.model)
    device = str(entry["params"].get("device", "cpu"))
    uses_cuda = device.startswith("cuda") or (device == "auto" and HOST_HAS_GPU)
    return max(entry["gpu"], int(uses_cuda))


def run_metrics(wildcards):
    return expand(
        f"{RUN}/metrics.json",
        dataset=wildcards.dataset,
        model=MODELS,
        group=held_out_groups(wildcards.dataset),
        seed=SEEDS,
    )
