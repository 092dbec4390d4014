import json
import re
import os
import shutil
from dataclasses import asdict

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
from pertflow.data.io import source_path
from pertflow.data.splits import held_out_of as split_named
from pertflow.data.splits import listed_splits, names_several
from pertflow.errors import ConfigError
from pertflow.keys import dataset_keys
from pertflow.models import Model, get_model_class
from pertflow.data.preprocess import RENAMED_QC_KEYS
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
# {split}: the held-out group, or perturbation/group in a dataset of several perturbations
# (pertflow.data.splits.HeldOut.name).
RUN = "results/{dataset}/runs/{model}/{split}/seed{seed}"
SPLIT = "results/{dataset}/splits/{split}"


wildcard_constraints:
    dataset=r"[^/]+",
    model=r"[^/]+",
    split=r"[^/]+(?:/[^/]+)?",
    seed=r"\d+",


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def held_out_of(wildcards):
    """The split of the wildcards (its perturbation and group), as a dict for a script."""
    return asdict(split_named(dataset_spec(wildcards), wildcards.split))


def experiment_keys(wildcards):
    """The experiment keys (pertflow.keys.Keys as a dict) of the split, or for a rule of the
    whole dataset, of its first split (whose model its figures load): scripts get these resolved
    instead of re-reading the dataset spec."""
    spec = dataset_spec(wildcards)
    name = wildcards.get("split") or held_out_splits(wildcards.dataset)[0]
    return dataset_keys(spec, split_named(spec, name).perturbation).as_dict()


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


def held_out_splits(dataset):
    """The names of the dataset's splits: listed perturbations and groups as given, known
    before anything runs, so adding or removing a group adds or removes only its jobs; with an
    `all`, those with `min_cells` cells, known once the checkpoint has looked at the
    preprocessed data."""
    spec = config["datasets"][dataset]
    listed = listed_splits(spec, dataset)
    if listed is not None:
        return [h.name(names_several(spec["perturbed"])) for h in listed]
    with open(checkpoints.held_out_groups.get(dataset=dataset).output[0]) as f:
        return json.load(f)["splits"]


# `device: auto` trains on a GPU when the job sees one; on a GPU host such a job must hold one.
HOST_HAS_GPU = shutil.which("nvidia-smi") is not None


# Where Snakemake writes each training job's benchmark (seconds, max RSS): plot_cost reads them.
TRAIN_BENCHMARK = (
    "results/{dataset}/benchmarks/train_predict/{model}/{split}/seed{seed}.tsv"
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
        spec = dataset_spec(wildcards)
        return {
            pattern.format(dataset=wildcards.dataset, model=m, split=name, seed=s): {
                "model": m,
                **asdict(split_named(spec, name)),
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
