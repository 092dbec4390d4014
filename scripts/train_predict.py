"""Fit one model on one split's training cells, save it, and predict the held-out group's
perturbed expression from its control cells with the model as reloaded from disk (so what is
saved is exactly what is scored)."""

import anndata as ad

from pertflow.keys import Keys
from pertflow.logs import log_to, planned_trainings, training_time_left
from pertflow.models import get_model_class
from pertflow.utils import write_h5ad

with log_to(snakemake.log[0]) as log:
    entry, seed = snakemake.params.entry, snakemake.params.seed
    cls = get_model_class(entry["model"], entry["module"])
    cls.use_threads(snakemake.threads)
    train = ad.read_h5ad(snakemake.input.train)
    log.info("training %s (%s) with seed %d on %d cells × %d genes; params %s",
             snakemake.wildcards.model, entry["model"], seed, *train.shape, entry["params"])
    model = cls(Keys(**snakemake.params.experiment_keys)).fit(train, entry["params"], seed)
    model.save(snakemake.output.model)

    prediction = cls.load(snakemake.output.model).predict(ad.read_h5ad(snakemake.input.control))
    log.info("predicted %d cells × %d genes", *prediction.shape)
    write_h5ad(prediction, snakemake.output.prediction)

    # For a user deciding whether to cut a long run short.
    progress = snakemake.params.progress
    planned = planned_trainings(snakemake.input.splits, progress["models"], progress["n_seeds"])
    estimate = training_time_left(progress["benchmarks"], planned,
                                  (snakemake.wildcards.model, snakemake.wildcards.split, seed))
    if estimate:
        log.info(estimate)
