import json
import re
import os
import shutil
from dataclasses import asdict

from snakemake.exceptions import WorkflowError

# The library is installed (`pip install -e .`; in conda envs by envs/install-pertflow.sh).
os.environ.update(PERTFLOW_ROOT=workflow.basedir)
try:
    from pertflow.config import (
        SCHEMA,
        baseline_models,
        check_models,
        check_renamed_keys,
        check_sources,
        check_unique_keys,
        dataset_specs,
        validate_config,
    )
except ImportError as error:
    raise WorkflowError(
        f"cannot import pertflow ({error}): install the workflow's library into the Python "
        f"that runs Snakemake with `pip install -e {workflow.basedir}` (`make run` does it)."
    ) from error
# held_out_of (as split_named) and names_several are also read by figures.smk.
from pertflow.data.splits import held_out_of as split_named
from pertflow.data.splits import names_several
from pertflow.models import Model, get_model_class
from pertflow.utils import clear_stale_snakemake_locks

if workflow.is_main_process:
    # Held open while this run lasts; lets the next run tell a killed run's locks from a live one's.
    WORKDIR_LOCK = clear_stale_snakemake_locks()

# Every check of the config that needs no data (pertflow.config), before anything runs.
check_unique_keys(workflow.configfiles)
check_renamed_keys(config, workflow.configfiles)
# One short ConfigError (file, key path, what is wrong, what is valid) instead of the schema dump;
# fills the schema's defaults like snakemake.utils.validate(config, schema, set_default=True).
validate_config(config, SCHEMA, workflow.configfiles)
# A config of screens alone has no benchmark: no datasets, no models.
config.setdefault("datasets", {})
config.setdefault("models", {})
config.setdefault("screens", {})
# Resolved once, as are the dataset specs: what the rules hand their jobs of each model entry.
MODEL_ENTRIES = check_models(config)
if workflow.is_main_process:
    check_sources(config)
DATASET_SPECS = dataset_specs(config)

DATASETS = list(config["datasets"])
MODELS = list(config["models"])
SEEDS = config["seeds"]
# Models with a latent space (their class overrides Model.embed) get latent UMAP figures.
LATENT_MODELS = [
    m
    for m, entry in MODEL_ENTRIES.items()
    if get_model_class(entry["model"], entry["module"]).embed is not Model.embed
]
# The entries with a latent space by model class (registry name): each class's entries (e.g. scGen
# and its encoder normalisation ablation) are compared side by side in figures/{class}_latents.
LATENT_CLASSES = {}
for m in LATENT_MODELS:
    LATENT_CLASSES.setdefault(MODEL_ENTRIES[m]["model"], []).append(m)

# Results paths, each spelled here only: the rules and input functions use these names, and
# scripts get the paths as their input, output or params.
SIMULATED = "results/{dataset}/simulated.h5ad"
DOWNLOADED = "results/{dataset}/download/raw.h5ad"
PREPROCESSED = "results/{dataset}/preprocessed.h5ad"
QC_REPORT = "results/{dataset}/qc.json"
HELD_OUT_GROUPS = "results/{dataset}/held_out_groups.json"
# {split}: the held-out group, or perturbation/group in a dataset of several perturbations
# (pertflow.data.splits.HeldOut.name).
SPLIT = "results/{dataset}/splits/{split}"
RUN = "results/{dataset}/runs/{model}/{split}/seed{seed}"
# Where Snakemake writes each training job's benchmark (seconds, max RSS): plot_cost and the
# training log's estimate of the time left read them.
TRAIN_BENCHMARKS = "results/{dataset}/benchmarks/train_predict"
TRAIN_BENCHMARK = f"{TRAIN_BENCHMARKS}/{{model}}/{{split}}/seed{{seed}}.tsv"


wildcard_constraints:
    dataset=r"[^/]+",
    model=r"[^/]+",
    split=r"[^/]+(?:/[^/]+)?",
    seed=r"\d+",


def canonical(value):
    """``value`` with the keys of every mapping in it sorted, recursively: for every rule param
    that holds a mapping of the config. Snakemake compares params by their repr, which keeps a
    dict's order, so without it the same config with its keys in another order (as
    yaml.safe_dump writes it) would rerun every job. The dicts built here (experiment_keys,
    held_out_of, training_entry) have a fixed order of their own, which scripts may write out
    (evaluate's metrics.json)."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def dataset_spec(wildcards):
    """The dataset's validated config entry."""
    return DATASET_SPECS[wildcards.dataset].entry


def held_out_of(wildcards):
    """The split of the wildcards (its perturbation and group), as a dict for a script."""
    return asdict(DATASET_SPECS[wildcards.dataset].split(wildcards.split))


def experiment_keys(wildcards):
    """The experiment keys (pertflow.keys.Keys as a dict) of the split, or for a rule of the
    whole dataset, of its first split (whose model its figures load): scripts get these resolved
    instead of re-reading the dataset spec."""
    name = wildcards.get("split") or held_out_splits(wildcards.dataset)[0]
    return DATASET_SPECS[wildcards.dataset].keys(name).as_dict()


def raw_path(wildcards):
    source = dataset_spec(wildcards)["source"]
    if "simulate" in source:
        return SIMULATED.format(dataset=wildcards.dataset)
    if "url" in source:
        return DOWNLOADED.format(dataset=wildcards.dataset)
    return source["path"]


def held_out_splits(dataset):
    """The names of the dataset's splits: listed perturbations and groups as given, known
    before anything runs, so adding or removing a group adds or removes only its jobs; with an
    `all`, those with `min_cells` cells, known once the checkpoint has looked at the
    preprocessed data."""
    listed = DATASET_SPECS[dataset].listed
    if listed is not None:
        return list(listed)
    with open(checkpoints.held_out_groups.get(dataset=dataset).output[0]) as f:
        return json.load(f)["splits"]


# `device: auto` trains on a GPU when the job sees one; on a GPU host such a job must hold one.
HOST_HAS_GPU = shutil.which("nvidia-smi") is not None


def training_entry(model):
    """What a training job (and a figure that loads its model) gets of a model entry: registry
    name, module and full params in the model's order (pertflow.config.model_entry); not its
    resources (threads, gpu), which do not change what it learns, so editing them reruns
    nothing."""
    return MODEL_ENTRIES[model]


def model_resource(name):
    """A function of the wildcards: a training job's resource ``name`` (threads, gpu, gpu_model,
    mem_mb) as its validated model entry sets it (the schema fills the defaults); the one place
    the rules read resources from."""
    return lambda wildcards: config["models"][wildcards.model].get(name)


def gpus(wildcards):
    """GPUs a training job holds: the entry's `gpu`, or one for a model that will use CUDA."""
    device = str(MODEL_ENTRIES[wildcards.model]["params"].get("device", "cpu"))
    uses_cuda = device.startswith("cuda") or (device == "auto" and HOST_HAS_GPU)
    return max(model_resource("gpu")(wildcards), int(uses_cuda))


def split_files(wildcards, models=(), seed=SEEDS[0]):
    """Per split of the dataset, by name: its control, truth and DEG files, and the ``seed``
    prediction of each of ``models``, {split: {"control": path, "truth": path, "degs": path,
    "predictions": {model: path}}}. Scripts look files up by split and model, so no order has
    to match."""
    files = {}
    for name in held_out_splits(wildcards.dataset):
        split = SPLIT.format(dataset=wildcards.dataset, split=name)
        files[name] = {
            "control": f"{split}/control.h5ad",
            "truth": f"{split}/truth.h5ad",
            "degs": f"{split}/degs.csv",
            "predictions": {
                model: f"{RUN}/prediction.h5ad".format(
                    dataset=wildcards.dataset, model=model, split=name, seed=seed
                )
                for model in models
            },
        }
    return files


def run_files(pattern):
    """Input function: the file ``pattern`` of every run of the dataset (models × splits ×
    seeds) as {path: {"model", "perturbation", "group", "seed"}}, so a script knows each file's
    run."""

    def files(wildcards):
        spec = DATASET_SPECS[wildcards.dataset]
        return {
            pattern.format(dataset=wildcards.dataset, model=m, split=name, seed=s): {
                "model": m,
                **asdict(spec.split(name)),
                "seed": s,
            }
            for m in MODELS
            for name in held_out_splits(wildcards.dataset)
            for s in SEEDS
        }

    return files


def paths(mapping):
    """Every path in a nested mapping of paths (split_files), for a rule's input."""
    found = []
    for value in mapping.values():
        found += paths(value) if isinstance(value, dict) else [value]
    return found


def latent_models(wildcards):
    """{entry: model directory} of the class's entries, each trained with the first split
    hidden, first seed."""
    split = held_out_splits(wildcards.dataset)[0]
    return {
        m: f"{RUN}/model".format(
            dataset=wildcards.dataset, model=m, split=split, seed=SEEDS[0]
        )
        for m in LATENT_CLASSES[wildcards.cls]
    }


def run_metrics(wildcards):
    return expand(
        f"{RUN}/metrics.json",
        dataset=wildcards.dataset,
        model=MODELS,
        split=held_out_splits(wildcards.dataset),
        seed=SEEDS,
    )


# ---- screens (workflow/rules/screen.smk) ----
from pertflow.config import check_screens

check_screens(config)
SCREENS = list(config["screens"])
SCREEN = "results/{screen}"


wildcard_constraints:
    screen="|".join(map(re.escape, SCREENS)) or "no-screen",
    fit=r"all|fold\d+",


def screen_spec(wildcards):
    return config["screens"][wildcards.screen]


def screen_fold_models(wildcards):
    n_folds = screen_spec(wildcards)["n_folds"]
    return [f"results/{wildcards.screen}/models/fold{k}" for k in range(n_folds)]


def screen_raw(wildcards):
    source = screen_spec(wildcards)["source"]
    if "simulate" in source:
        return f"results/{wildcards.screen}/simulated_screen.h5ad"
    return source["path"]
