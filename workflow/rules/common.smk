import json
import re
import os
import shutil

import yaml
from snakemake.exceptions import WorkflowError

# The library is installed (`pip install -e .`; in conda envs by envs/install-pertflow.sh).
os.environ.update(PERTFLOW_ROOT=workflow.basedir)
try:
    from pertflow.config import (
        baseline_models,
        check_models,
        check_unique_keys,
        model_entry,
        validate_config,
    )
except ImportError as error:
    raise WorkflowError(
        f"cannot import pertflow ({error}): install the workflow's library into the Python "
        f"that runs Snakemake with `pip install -e {workflow.basedir}` (`make run` does it)."
    ) from error
from pertflow.data import source_path
from pertflow.errors import ConfigError
from pertflow.keys import dataset_keys
from pertflow.models import Model, get_model_class
from pertflow.preprocess import RENAMED_QC_KEYS
from pertflow.utils import clear_stale_snakemake_locks

if workflow.is_main_process:
    # Held open while this run lasts; lets the next run tell a killed run's locks from a live one's.
    WORKDIR_LOCK = clear_stale_snakemake_locks()


def qc_in_file(path, dataset):
    """The `qc:` of dataset ``dataset`` as the config file at ``path`` writes it."""
    with open(path, encoding="utf-8") as f:
        datasets = (yaml.safe_load(f) or {}).get("datasets") or {}
    return (datasets.get(dataset) or {}).get("qc") or {}


def check_renamed_keys(config, configfiles):
    """Fail on a key spelled as before its rename, naming the file, the key and the new name (the
    schema alone would only say that the old name is unexpected)."""
    datasets = config.get("datasets")
    for dataset, spec in datasets.items() if isinstance(datasets, dict) else ():
        qc = spec.get("qc") if isinstance(spec, dict) else None
        for old, new in RENAMED_QC_KEYS.items():
            if isinstance(qc, dict) and old in qc:
                files = [str(p) for p in configfiles if old in qc_in_file(p, dataset)]
                raise ConfigError(
                    f"{', '.join(files) or 'config'}: datasets.{dataset}.qc.{old} is now "
                    f"qc.{new} (the cells a gene must be detected in; the dataset's own "
                    "`min_cells` is the cells a held-out group needs). Rename the key."
                )


check_unique_keys(workflow.configfiles)
check_renamed_keys(config, workflow.configfiles)
# One short ConfigError (file, key path, what is wrong, what is valid) instead of the schema dump;
# fills the schema's defaults like snakemake.utils.validate(config, schema, set_default=True).
validate_config(
    config,
    os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"),
    workflow.configfiles,
)
# A config of screens alone has no benchmark: no datasets, no models.
config.setdefault("datasets", {})
config.setdefault("models", {})
config.setdefault("screens", {})
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
# The entries with a latent space by model class (registry name): each class's entries (e.g. scGen
# and its encoder normalisation ablation) are compared side by side in figures/{class}_latents.
LATENT_CLASSES = {}
for m in LATENT_MODELS:
    LATENT_CLASSES.setdefault(model_entry(config, m)["model"], []).append(m)
RUN = "results/{dataset}/runs/{model}/{group}/seed{seed}"
SPLIT = "results/{dataset}/splits/{group}"


wildcard_constraints:
    dataset=r"[^/]+",
    model=r"[^/]+",
    group=r"[^/]+",
    seed=r"\d+",


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def experiment_keys(wildcards):
    """The dataset's experiment keys (pertflow.keys.Keys as a dict): scripts get these resolved
    instead of re-reading the dataset spec."""
    return dataset_keys(dataset_spec(wildcards)).as_dict()


def raw_path(wildcards):
    source = dataset_spec(wildcards)["source"]
    if "simulate" in source:
        return f"results/{wildcards.dataset}/simulated.h5ad"
    if "url" in source:
        return f"results/{wildcards.dataset}/download/raw.h5ad"
    return source["path"]


if workflow.is_main_process:
    # A `source: path:` is relative to the working directory (--directory): a missing file stops
    # the run before any job, naming the absolute path tried.
    for name, spec in config["datasets"].items():
        if "path" in spec["source"]:
            source_path(spec["source"]["path"], name)


# What the preprocessing job gets of its dataset entry: the keys that shape the preprocessed data
# and no other, so that editing `held_out`, `min_cells` or a figure setting (`latent_colors`)
# does not rerun it (nor, through it, every training).
PREPROCESS_KEYS = ["rename", "condition_key", "control", "perturbed", "group_key"]
PREPROCESS_KEYS += ["counts", "gene_symbols", "qc", "hvg"]


def preprocess_spec(wildcards):
    spec = dataset_spec(wildcards)
    return {key: spec[key] for key in PREPROCESS_KEYS if key in spec}


def held_out_groups(dataset):
    """The held-out groups: a `held_out:` list as given, known before anything runs, so adding
    or removing a group adds or removes only that group's jobs; for `all`, the groups with
    `min_cells` cells, known once the checkpoint has looked at the preprocessed data."""
    held_out = config["datasets"][dataset]["held_out"]
    if held_out != "all":
        return list(held_out)
    with open(checkpoints.held_out_groups.get(dataset=dataset).output[0]) as f:
        return json.load(f)["groups"]


# `device: auto` trains on a GPU when the job sees one; on a GPU host such a job must hold one.
HOST_HAS_GPU = shutil.which("nvidia-smi") is not None


# Where Snakemake writes each training job's benchmark (seconds, max RSS): plot_cost reads them.
TRAIN_BENCHMARK = (
    "results/{dataset}/benchmarks/train_predict/{model}/{group}/seed{seed}.tsv"
)


def training_entry(model):
    """What a training job (and a figure that loads its model) gets of a model entry: registry
    name, module and full params; not its resources (threads, gpu), which do not change what it
    learns, so editing them reruns nothing."""
    entry = model_entry(config, model)
    return {key: entry[key] for key in ("model", "module", "params")}


def model_resource(name):
    """A function of the wildcards: a training job's resource ``name`` (threads, gpu, gpu_model,
    mem_mb) as its validated model entry sets it (the schema fills the defaults); the one place
    the rules read resources from."""
    return lambda wildcards: config["models"][wildcards.model].get(name)


def gpus(wildcards):
    """GPUs a training job holds: the entry's `gpu`, or one for a model that will use CUDA."""
    device = str(model_entry(config, wildcards.model)["params"].get("device", "cpu"))
    uses_cuda = device.startswith("cuda") or (device == "auto" and HOST_HAS_GPU)
    return max(model_resource("gpu")(wildcards), int(uses_cuda))


def group_files(wildcards, models=(), seed=SEEDS[0]):
    """Per held-out group of the dataset, by name: its split's control, truth and DEG files, and
    the ``seed`` prediction of each of ``models``, {group: {"control": path, "truth": path,
    "degs": path, "predictions": {model: path}}}. Scripts look files up by group and model, so
    no order has to match."""
    files = {}
    for group in held_out_groups(wildcards.dataset):
        split = SPLIT.format(dataset=wildcards.dataset, group=group)
        files[group] = {
            "control": f"{split}/control.h5ad",
            "truth": f"{split}/truth.h5ad",
            "degs": f"{split}/degs.csv",
            "predictions": {
                model: f"{RUN}/prediction.h5ad".format(
                    dataset=wildcards.dataset, model=model, group=group, seed=seed
                )
                for model in models
            },
        }
    return files


def run_files(pattern):
    """Input function: the file ``pattern`` of every run of the dataset (models × held-out
    groups × seeds) as {path: {"model", "group", "seed"}}, so a script knows each file's run.
    """

    def files(wildcards):
        return {
            pattern.format(dataset=wildcards.dataset, model=m, group=g, seed=s): {
                "model": m,
                "group": g,
                "seed": s,
            }
            for m in MODELS
            for g in held_out_groups(wildcards.dataset)
            for s in SEEDS
        }

    return files


def paths(mapping):
    """Every path in a nested mapping of paths (group_files), for a rule's input."""
    found = []
    for value in mapping.values():
        found += paths(value) if isinstance(value, dict) else [value]
    return found


def latent_models(wildcards):
    """{entry: model directory} of the class's entries, each trained with the first held-out
    group hidden, first seed."""
    group = held_out_groups(wildcards.dataset)[0]
    return {
        m: f"{RUN}/model".format(
            dataset=wildcards.dataset, model=m, group=group, seed=SEEDS[0]
        )
        for m in LATENT_CLASSES[wildcards.cls]
    }


def run_metrics(wildcards):
    return expand(
        f"{RUN}/metrics.json",
        dataset=wildcards.dataset,
        model=MODELS,
        group=held_out_groups(wildcards.dataset),
        seed=SEEDS,
    )


# ---- screens (workflow/rules/screen.smk) ----
SCREENS = list(config["screens"])
SCREEN = "results/{screen}"


wildcard_constraints:
    screen="|".join(map(re.escape, SCREENS)) or "no-screen",


def screen_spec(wildcards):
    return config["screens"][wildcards.screen]


def screen_raw(wildcards):
    source = screen_spec(wildcards)["source"]
    if "simulate" in source:
        return f"results/{wildcards.screen}/simulated_screen.h5ad"
    return source["path"]
