"""Where a training step of our contrastiveVI spends its time, on the Kang data (issue 20).

    .venv/bin/python bench/contrastivevi_profile.py [--steps 40] [--threads 1] [--path plain]
    .venv/bin/python bench/contrastivevi_profile.py --path fast --cprofile --torch-profile

Sets the model up as ``fit`` does (bench settings: 128 hidden, 10 + 10 latents, batch 128 per
group, the bench's training cells) and times each part of a step on its own:

- ``plain`` (Pyro's ``SVI.step`` taken apart): building the batch; tracing guide and model
  (``elbo._get_traces``: the networks' forward passes and Pyro's bookkeeping); the loss from the
  traces (KL terms and log-likelihood sums); backward; the optimiser (Pyro's per-parameter
  ``ClippedAdam``) with zeroing the gradients;
- ``fast`` (what ``fit`` runs now): building the sparse batch; the hand-written loss
  (``ContrastiveVAE.loss``: forward and loss together); backward; the fused optimiser step.

``--compare ROUNDS`` instead times whole bench runs (``contrastivevi_vs_reference.run_ours`` and
``run_reference``: s/epoch, test ELBO, separation scores, peak RSS), each in its own process and
interleaved (ours, reference, ours, reference, ...; ``--before FILE`` adds an older
single-file contrastivevi.py), one model seed per round, the bench's test split throughout.

Also reported: the forward passes of the networks alone in plain torch, so the share of Pyro's
bookkeeping in the tracing time can be read off. ``--cprofile`` prints the top functions by own
time, ``--torch-profile`` the top torch operators by self CPU time. Timings are medians over the
steps; on a loaded machine compare ratios within one run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from contrastivevi_vs_reference import (CONDITION, CONTROL, DATA, GROUP, MATCHED,  # noqa: E402
                                        PERTURBED, load, test_mask)


def setup(seed: int = 0):
    """A model (its network built), its cells, the plates' totals and one epoch's batches, as
    ``fit`` sets them up."""
    import pyro
    import torch
    from pertflow.keys import Keys
    from pertflow.models import get_model_class
    from pertflow.models.contrastivevi import training

    adata = load(DATA)
    train = adata[~test_mask(adata)].copy()
    model = get_model_class("contrastivevi")(Keys(CONDITION, CONTROL, PERTURBED, GROUP))
    model.params = model.check_params({**MATCHED, "max_epochs": 1})
    model.seed = seed
    cells, split, rng = model.prepare(train)
    totals = (len(split.control), len(split.perturbed))
    batches = list(training.epoch_batches(split.control, split.perturbed,
                                          model.params["batch_size"], rng))
    return model, cells, totals, batches, pyro, torch, training


def stepper(path: str, seed: int = 0, alone: bool = True):
    """A function of the step number that runs one training step of ``path`` and returns the
    seconds of each part."""
    model, cells, totals, batches, pyro, torch, training = setup(seed)
    from pyro import poutine
    from pyro.infer import TraceMeanField_ELBO
    from pyro.infer.util import zero_grads
    from pyro.optim import ClippedAdam

    p, network = model.params, model.network
    kl_weight = 0.5
    clock = time.perf_counter
    network.train()
    store = pyro.get_param_store().scope()
    with store as state:
        if path == "plain":
            elbo = TraceMeanField_ELBO()
            optimiser = ClippedAdam({"lr": p["lr"], "eps": 0.01,
                                     "weight_decay": p["weight_decay"],
                                     "clip_norm": p["clip_norm"]})
        else:
            optimiser = training.optimiser(network, p)

    def step(i: int) -> dict[str, float]:
        c, t = batches[i % len(batches)]
        with pyro.get_param_store().scope(state):
            t0 = clock()
            if path == "plain":
                batch = cells.dense_batch(c, t, *totals)
                t1 = clock()
                # Pyro's SVI.step taken apart (its own private steps: no public API splits them).
                with poutine.trace(param_only=True) as param_capture:
                    model_trace, guide_trace = next(elbo._get_traces(
                        network.model, network.guide, (batch, kl_weight), {}))
                    t2 = clock()
                    _, surrogate = elbo._differentiable_loss_particle(model_trace, guide_trace)
                    t3 = clock()
                    surrogate.backward()
                t4 = clock()
                params = {site["value"].unconstrained()
                          for site in param_capture.trace.nodes.values()}
                optimiser(params)
                zero_grads(params)
                t5 = clock()
                parts = {"batch": t1 - t0, "trace model+guide": t2 - t1, "loss": t3 - t2,
                         "backward": t4 - t3, "optimiser": t5 - t4}
            else:
                batch = cells.sparse_batch(c, t, *totals)
                t1 = clock()
                surrogate, _ = network.loss(batch, kl_weight)
                t2 = clock()
                optimiser.zero_grad(set_to_none=True)
                surrogate.backward()
                t3 = clock()
                optimiser.step()
                t4 = clock()
                parts = {"batch": t1 - t0, "forward + loss": t2 - t1, "backward": t3 - t2,
                         "optimiser": t4 - t3}
            parts["step"] = sum(parts.values())
            if not alone:
                return parts
            # The networks' forward passes alone, without Pyro (not part of the step).
            with torch.no_grad():
                dense_batch = cells.dense_batch(c, t, *totals)
                t6 = clock()
                expression = dense_batch.normalised
                network.background_encoder(expression, dense_batch.covariates)
                t_loc, _ = network.salient_encoder(expression, dense_batch.covariates)
                network.decoder(torch.cat([t_loc, t_loc], -1), dense_batch.covariates)
                parts["(networks' forward alone, dense)"] = clock() - t6
        return parts

    return step


def timed_steps(paths, n_steps: int, alone: bool = True) -> dict[str, dict[str, list[float]]]:
    """Steps of each path, interleaved (plain, fast, plain, ...): the machine's load changes.
    ``alone``: also time the networks' forward passes alone."""
    steppers = {path: stepper(path, alone=alone) for path in paths}
    times = {path: defaultdict(list) for path in paths}
    for i in range(n_steps):
        for path, step in steppers.items():
            parts = step(i)
            if i >= 3:  # the first steps allocate and warm up
                for name, value in parts.items():
                    times[path][name].append(value)
    return times


def print_parts(times: dict[str, dict[str, list[float]]]) -> None:
    reference = statistics.median(times["plain"]["step"]) if "plain" in times else None
    for path, parts in times.items():
        step = statistics.median(parts["step"])
        print(f"\n== {path}: median over {len(parts['step'])} steps (interleaved with the other "
              f"path), load average {os.getloadavg()[0]:.1f}")
        for name, values in parts.items():
            median = statistics.median(values)
            print(f"  {name:<34} {1e3 * median:8.1f} ms  {100 * median / step:5.1f} % of the "
                  "step" + (f"  {median / reference:5.3f} of plain's step" if reference else ""))


def run_profilers(path: str, n_steps: int, use_cprofile: bool, use_torch: bool) -> None:
    if use_cprofile:
        profiler = cProfile.Profile()
        profiler.enable()
        timed_steps([path], n_steps, alone=False)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(f"\n== cProfile, {path}, top 25 by own time\n" + out.getvalue()[-6000:])
    if use_torch:
        import torch
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed_steps([path], n_steps, alone=False)
        print(f"\n== torch profiler, {path}, top 25 operators by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25,
                                        max_name_column_width=45))
        del torch


def one_run(kind: str, seed: int, epochs: int, before: str | None) -> dict:
    """One bench run in this process: ``ours``, ``before`` (the model in file ``before``) or
    ``reference`` (scvi-tools, in its own interpreter)."""
    import contrastivevi_vs_reference as bench

    adata = bench.load(DATA)
    test = test_mask(adata)  # the bench's split (its SEED), whatever the model seed
    bench.SEED = seed
    if kind == "reference":
        return bench.run_reference(adata, test, epochs)
    if kind == "before":
        import importlib.util

        # Nothing has imported pertflow.models.contrastivevi in this process, so the older file
        # registers the name, and run_ours fits its model.
        spec = importlib.util.spec_from_file_location("contrastivevi_before", before)
        module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return bench.run_ours(adata, test, epochs)


def compare(rounds: int, epochs: int, threads: int, before: str | None,
            reference_python: Path, first_seed: int = 0) -> None:
    import json
    import subprocess

    kinds = ["ours", "reference"] + (["before"] if before else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(  # pertflow for the reference's side
        filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")]))}
    rows = []
    for seed in range(first_seed, first_seed + rounds):
        for kind in kinds:
            python = str(reference_python) if kind == "reference" else sys.executable
            command = [python, __file__, "--one", kind, "--seed", str(seed), "--epochs",
                       str(epochs), "--threads", str(threads)] + (
                ["--before", before] if before else [])
            load = os.getloadavg()[0]
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
            out, err = child.communicate()
            if child.returncode != 0:
                print(f"{kind} seed {seed} failed:\n{err[-3000:]}")
                continue
            result = json.loads(out.strip().splitlines()[-1])
            rows.append({"kind": kind, "seed": seed, "load": load, **result})
            print(json.dumps(rows[-1]), flush=True)
    print_comparison(rows)


def print_comparison(rows: list[dict]) -> None:
    """Per round, each kind's s/epoch over the reference's of the same round; then means."""
    by = defaultdict(dict)
    for row in rows:
        by[row["seed"]][row["kind"]] = row
    kinds = sorted({row["kind"] for row in rows}, key=["ours", "before", "reference"].index)
    metrics = [("s/epoch", lambda r: r["seconds_per_epoch"]),
               ("s/epoch ÷ reference", None),
               ("test −ELBO/cell", lambda r: r["test"]["loss"]),
               ("test recon/cell", lambda r: r["test"]["reconstruction_loss"]),
               ("salient kNN (condition)", lambda r: r["salient_condition"]["knn"]),
               ("background kNN (condition)", lambda r: r["background_condition"]["knn"]),
               ("background kNN (cell type)", lambda r: r["background_cell_type"]["knn"]),
               ("peak RSS MiB", lambda r: r["peak_rss_mib"])]
    print("\n| metric | " + " | ".join(kinds) + " |\n| --- |" + " --- |" * len(kinds))
    for name, get in metrics:
        cells = []
        for kind in kinds:
            values = []
            for seed, runs in by.items():
                if kind not in runs:
                    continue
                if get is None:
                    if "reference" in runs:
                        values.append(runs[kind]["seconds_per_epoch"]
                                      / runs["reference"]["seconds_per_epoch"])
                else:
                    values.append(get(runs[kind]))
            cells.append(" / ".join(f"{v:.3f}" for v in values) + (
                f" (mean {np.mean(values):.3f})" if len(values) > 1 else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    loads = ", ".join(f"{row['load']:.1f}" for row in rows)
    print(f"\nload average (1 min) at each run's start: {loads}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--path", choices=("plain", "fast", "both"), default="both")
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--torch-profile", action="store_true")
    parser.add_argument("--compare", type=int, metavar="ROUNDS",
                        help="time whole bench runs instead, one model seed per round")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=0, help="model seed of the first round")
    parser.add_argument("--before", help="an older contrastivevi.py to time beside ours")
    parser.add_argument("--reference-python", type=Path,
                        default=ROOT / "bench" / ".venv-cvi-reference" / "bin" / "python")
    parser.add_argument("--one", choices=("ours", "before", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.compare:
        compare(args.compare, args.epochs, args.threads, args.before, args.reference_python,
                args.first_seed)
        return

    import torch

    torch.set_num_threads(args.threads)
    if args.one:
        import json
        import resource

        result = one_run(args.one, args.seed, args.epochs, args.before)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    paths = ("plain", "fast") if args.path == "both" else (args.path,)
    print_parts(timed_steps(paths, args.steps))
    for path in paths:
        run_profilers(path, min(args.steps, 15), args.cprofile, args.torch_profile)


if __name__ == "__main__":
    main()
